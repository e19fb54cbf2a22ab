"""BEIR evaluation data: a folder of ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

BEIR gives queries, a corpus and relevance judgments, not candidate lists: the candidates of each query
are retrieved from the corpus first (``gumbel-rag eval`` and ``gumbel-rag mine`` do it with BM25 or a
dense encoder), then :func:`apply_qrels` marks the retrieved documents the qrels judge relevant
(score > 0) as gold. Queries carry no answers, except where the set puts them in the query's
``metadata`` (``answer`` or ``answers``, as BEIR's HotpotQA does); without one a row is good for
ranking metrics and supervised training, not for a reader.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_rag.data.formats.qalog import (
    Where,
    answer_list,
    as_id,
    as_metadata,
    as_text,
    check_example_text,
    check_text,
    fail,
    read_bytes,
    read_rows,
    type_name,
)
from gumbel_rag.data.schema import Candidate, DataError, LoadSummary, QAExample

__all__ = ["GOLD_QRELS", "BeirData", "apply_qrels", "beir_paths", "candidate_recall", "is_beir", "load_beir"]

GOLD_QRELS = "qrels (judged relevant, score > 0, among the retrieved candidates)"
_NAMES = ("corpus", "queries")


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _folder_of(path: Path) -> Path | None:
    """The BEIR folder that ``path`` is, or whose qrels file it is; None if it is neither."""
    folder = path.parent.parent if path.is_file() and path.parent.name == "qrels" else path
    if folder.is_dir() and all(_find(folder, n) for n in _NAMES) and (folder / "qrels").is_dir():
        return folder
    return None


def is_beir(path: str | Path) -> bool:
    """Whether ``path`` is a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or a qrels file in one."""
    return _folder_of(Path(path)) is not None


def beir_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """(corpus, queries, qrels file) of a BEIR folder: its ``qrels/test.tsv`` unless given a qrels file.

    A folder without ``test.tsv`` must have exactly one qrels file; else the error lists them.
    """
    p = Path(path)
    folder = _folder_of(p)
    if folder is None:
        raise DataError("not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv)", path=str(path))
    if p.is_file():
        qrels = p
    else:
        splits = sorted((folder / "qrels").glob("*.tsv"))
        test = folder / "qrels" / "test.tsv"
        if test.is_file():
            qrels = test
        elif len(splits) == 1:
            qrels = splits[0]
        else:
            names = ", ".join(s.name for s in splits) or "none"
            msg = f"which split? qrels/ holds {names} and no test.tsv: pass the qrels file itself"
            raise DataError(msg, path=str(path), reason="unknown format")
    return _find(folder, "corpus"), _find(folder, "queries"), qrels  # type: ignore[return-value]


@dataclass
class BeirData:
    """A BEIR split: one example per judged query (no candidates yet), the corpus, and what was read."""

    examples: list[QAExample]
    corpus: list[Candidate]
    qrels_file: Path
    summary: LoadSummary = field(default_factory=LoadSummary)


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows, _ = read_rows(path)
    out = []
    for line, row in rows:
        if isinstance(row, DataError):
            raise row
        out.append((line, row))
    return out


def _document(row: dict[str, Any], where: Where) -> Candidate:
    text = as_text(row.get("text"), where, "text", "candidate text")
    title = row.get("title")
    if title is not None and not isinstance(title, str):
        raise fail(where, "title", f"expected a string, got {type_name(title)}", "bad candidates")
    extras = {k: v for k, v in row.items() if k not in ("_id", "text", "title", "metadata") and v is not None}
    metadata = {**extras, **as_metadata(row.get("metadata"), where, "metadata", False)}
    doc_id = as_id(row.get("_id"), where, "_id")
    if doc_id is None:
        raise fail(where, "_id", "missing: every document needs an id", "missing id")
    candidate = Candidate(text=text, id=doc_id, title=title or None, metadata=metadata)
    check_text([candidate.text, candidate.title], where, "text")
    check_text(candidate.metadata, where, "metadata")
    return candidate


def _answers(metadata: dict[str, Any], where: Where) -> list[str]:
    answers: list[str] = []
    for key in ("answer", "answers"):
        if metadata.get(key) is not None:
            answers += [a for a in answer_list(metadata[key], where, f"metadata.{key}") if a not in answers]
    return answers


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    """query id -> {document id: relevance score}, in the file's order."""
    text = read_bytes(path).decode("utf-8", errors="replace")
    judged: dict[str, dict[str, int]] = {}
    for number, cells in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter="\t"), start=1):
        if not cells or all(not c.strip() for c in cells):
            continue
        if number == 1 and cells[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue  # the header
        where = (str(path), number)
        if len(cells) < 3:
            raise fail(
                where, None, f"expected query-id, corpus-id, score; got {len(cells)} columns", "bad qrels"
            )
        try:
            score = int(float(cells[2]))
        except ValueError:
            raise fail(where, "score", f"expected a number, got {cells[2]!r}", "bad qrels") from None
        judged.setdefault(cells[0].strip(), {})[cells[1].strip()] = score
    if not judged:
        raise DataError("empty qrels file: no judgments", path=str(path), reason="empty file")
    return judged


def load_beir(path: str | Path) -> BeirData:
    """Read a BEIR split (see :func:`beir_paths`): the judged queries in ``queries.jsonl`` order.

    Each example's ``metadata["qrels"]`` holds its judgments ({document id: score}); its candidates and
    gold come after retrieval (:func:`apply_qrels`). Bad rows raise DataError naming file and line.
    """
    corpus_file, queries_file, qrels_file = beir_paths(path)
    corpus = [_document(row, (str(corpus_file), line)) for line, row in _rows(corpus_file)]
    judged = _qrels(qrels_file)
    examples = []
    seen: set[str] = set()
    for line, row in _rows(queries_file):
        where = (str(queries_file), line)
        query_id = as_id(row.get("_id"), where, "_id")
        if query_id not in judged:
            continue  # a query of another split
        metadata = as_metadata(row.get("metadata"), where, "metadata", False)
        example = QAExample(
            question=as_text(row.get("text"), where, "text", "question", empty_ok=False),
            answers=_answers(metadata, where),
            id=query_id,
            source=f"{where[0]}:{where[1]}",
            metadata={**metadata, "qrels": judged[query_id]},
        )
        check_example_text(example, where)
        examples.append(example)
        seen.add(query_id)
    missing = [q for q in judged if q not in seen]
    if missing:
        msg = f"{len(missing)} judged queries are not in {queries_file.name} (first: {missing[0]!r})"
        raise DataError(msg, path=str(qrels_file), reason="unknown query")
    if not corpus:
        raise DataError("empty corpus: no documents", path=str(corpus_file), reason="empty file")
    return BeirData(examples, corpus, qrels_file, LoadSummary(loaded=len(examples)))


def apply_qrels(examples: list[QAExample]) -> tuple[list[QAExample], LoadSummary]:
    """Gold = the retrieved candidates that the example's qrels judge relevant (score > 0).

    Returns the examples and a summary whose ``gold_sources`` counts them, for the evaluation report.
    """
    out = []
    for ex in examples:
        relevant = {doc for doc, score in (ex.metadata.get("qrels") or {}).items() if score > 0}
        out.append(dataclasses.replace(ex, gold=[i for i, c in enumerate(ex.candidates) if c.id in relevant]))
    return out, LoadSummary(loaded=len(out), gold_sources={GOLD_QRELS: len(out)} if out else {})


def candidate_recall(examples: list[QAExample]) -> float | None:
    """Mean fraction of each query's relevant documents that retrieval put among its candidates."""
    fractions = []
    for ex in examples:
        relevant = {doc for doc, score in (ex.metadata.get("qrels") or {}).items() if score > 0}
        if relevant:
            fractions.append(len(relevant & {c.id for c in ex.candidates}) / len(relevant))
    return sum(fractions) / len(fractions) if fractions else None
