"""Loading QA logs, HotpotQA, MuSiQue and FiD/DPR files into QAExamples, filtering, and writing QA logs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from gumbel_rag.data.formats.beir import is_beir
from gumbel_rag.data.formats.detect import FORMATS, Format, format_of_row
from gumbel_rag.data.formats.fid import fid_gold_source, parse_fid_row
from gumbel_rag.data.formats.hotpotqa import parse_hotpotqa_row
from gumbel_rag.data.formats.musique import parse_musique_row
from gumbel_rag.data.formats.qalog import (
    Feedback,
    Row,
    Where,
    check_example_text,
    container_of,
    filter_rated,
    is_feedback_row,
    join_feedback,
    parse_feedback_row,
    parse_qalog_row,
    peek_row,
    read_rows,
    write_qalog,
)
from gumbel_rag.data.schema import DataError, LoadSummary, QAExample

__all__ = [
    "FORMATS",
    "Format",
    "detect_format",
    "filter_rated",
    "filter_trainable",
    "load_examples",
    "load_many",
    "write_qalog",
]

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq")

_PARSERS: dict[Format, Callable[[dict[str, Any], Where, bool], QAExample]] = {
    "qalog": parse_qalog_row,
    "hotpotqa": parse_hotpotqa_row,
    "musique": parse_musique_row,
    "fid": parse_fid_row,
}
# Where a labelled row's gold came from, as evaluation reports it.
_GOLD_SOURCES: dict[Format, Callable[[dict[str, Any]], str]] = {
    "qalog": lambda row: "gold labels ('gold', candidates' 'gold' flags)",
    "hotpotqa": lambda row: "supporting_facts",
    "musique": lambda row: "is_supporting",
    "fid": fid_gold_source,
}


def _encoded(path: str | Path) -> bool:
    # CSV and Parquet cells may hold JSON text; JSON rows hold JSON values.
    return container_of(path) in ("csv", "tsv", "parquet")


def detect_format(path: str | Path) -> Format:
    """Which format a file holds, from its extension (the container) and its first row.

    Raises DataError when the first row fits two formats (pass ``format=`` / ``--format``).
    """
    container_of(path)  # raises a clear DataError for an unsupported extension
    first = peek_row(path)
    if first is None:
        return "qalog"
    line, row = first
    return format_of_row(row, (str(path), line), _encoded(path))


def _format_of_rows(rows: Sequence[Row], path: str, encoded: bool) -> Format:
    for line, row in rows:
        if isinstance(row, dict):
            return format_of_row(row, (path, line), encoded)
    return "qalog"


def _check_format(format: str) -> None:
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")


def _check_file(p: Path) -> None:
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory; expected a data file")
    if not p.is_file():
        raise FileNotFoundError(f"no such data file: {p}")


def load_examples(
    path: str | Path, format: str = "auto", *, skip_invalid: bool = False
) -> tuple[list[QAExample], LoadSummary]:
    """Load one file; invalid rows raise DataError, or with ``skip_invalid`` are skipped and counted.

    A problem with the whole file (unreadable, not the format it says, a row that fits two formats)
    raises even with ``skip_invalid``: skipping it would drop every row under one count. An empty file
    is the exception: with ``skip_invalid`` it is counted as one skip (it holds no rows to lose).
    A captured QA log's feedback records are joined onto their rows (see ``join_feedback``).
    """
    examples, summary, feedback = _load_file(path, format, skip_invalid)
    return join_feedback(examples, feedback, summary), summary


def _load_file(
    path: str | Path, format: str, skip_invalid: bool
) -> tuple[list[QAExample], LoadSummary, list[Feedback]]:
    _check_format(format)
    p = Path(path)
    _check_file(p)
    summary = LoadSummary()
    rows, encoded = read_rows(path)
    if not rows:
        err = DataError("empty file: no rows", path=str(path), reason="empty file")
        if not skip_invalid:
            raise err
        summary.skip_error(err)
        return [], summary, []
    fmt: Format = _format_of_rows(rows, str(path), encoded) if format == "auto" else format  # type: ignore[assignment]
    parse, gold_source = _PARSERS[fmt], _GOLD_SOURCES[fmt]
    examples = []
    feedback: list[Feedback] = []
    for line, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            if fmt == "qalog" and is_feedback_row(row):
                feedback.append(parse_feedback_row(row, (str(path), line), encoded))
                continue
            example = parse(row, (str(path), line), encoded)
            check_example_text(example, (str(path), line))
        except DataError as err:
            if not skip_invalid:
                raise
            summary.skip_error(err)
            continue
        examples.append(example)
        if example.gold is not None:
            source = gold_source(row)
            summary.gold_sources[source] = summary.gold_sources.get(source, 0) + 1
    summary.loaded = len(examples)
    return examples, summary, feedback


def _expand(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if is_beir(p):
            msg = (
                "a BEIR folder has queries, a corpus and qrels but no candidates: retrieve them first "
                f"('gumbel-rag mine --data {p} --output mined.jsonl'); 'gumbel-rag eval' reads it as it is"
            )
            raise DataError(msg, path=str(p), reason="unknown format")
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and _is_data_file(f))
            if not found:
                raise FileNotFoundError(f"no data files ({', '.join(DATA_SUFFIXES)}) in directory {p}")
            files.extend(found)
        else:
            files.append(p)
    return files


def _is_data_file(p: Path) -> bool:
    name = p.name.lower().removesuffix(".gz")
    return name.endswith(DATA_SUFFIXES)


def load_many(
    paths: str | Path | Iterable[str | Path], format: str = "auto", skip_invalid: bool = False
) -> tuple[list[QAExample], LoadSummary]:
    """Load several files (a directory stands for its data files, sorted) into one list and summary.

    Feedback records of a captured log are joined onto their rows across all the files.
    """
    _check_format(format)
    examples: list[QAExample] = []
    feedback: list[Feedback] = []
    summary = LoadSummary()
    for p in _expand(paths):
        loaded, part, notes = _load_file(p, format, skip_invalid)
        examples.extend(loaded)
        feedback.extend(notes)
        summary = summary.merge(part)
    # Joined across the files: a log rotated by size has feedback in later files than its rows.
    return join_feedback(examples, feedback, summary), summary


def _origin(ex: QAExample, position: int) -> tuple[str, int]:
    if ex.source and ":" in ex.source:
        path, _, line = ex.source.rpartition(":")
        if line.isdigit():
            return path, int(line)
    return ex.id or "<examples>", position + 1


def filter_trainable(
    examples: Sequence[QAExample], k: int, *, need_answers: bool = True
) -> tuple[list[QAExample], LoadSummary]:
    """Keep the rows that can teach a top-``k`` reranker: those with more than ``k`` candidates.

    ``need_answers``: the method learns from a reader's answer loss, so rows without an answer (the
    retrieval-only rows of a BEIR folder) are left out too; a supervised method needs none.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    kept: list[QAExample] = []
    summary = LoadSummary()
    for position, ex in enumerate(examples):
        n = len(ex.candidates)
        path, line = _origin(ex, position)
        if need_answers and not ex.answers:
            summary.skip(path, line, "no answer", f"{path}:{line}: no answer for the reader to learn from")
            continue
        if n > k:
            kept.append(ex)
            continue
        # With n <= k the top-k keeps every candidate whatever the scores, so no gradient reaches them.
        reason = "no candidates" if n == 0 else f"at most k={k} candidates"
        summary.skip(path, line, reason, f"{path}:{line}: {n} candidate{'s' * (n != 1)}, need more than {k}")
    summary.loaded = len(kept)
    return kept, summary
