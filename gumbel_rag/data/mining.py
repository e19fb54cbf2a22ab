"""Mining candidates for QA logs that have none: BM25, a dense encoder, or any retriever callable.

The data layer loads no model: dense retrieval takes an encoder object (anything with ``encode(texts)``,
such as a loaded ``GumbelReranker``), and :func:`mine_qa_log` / :func:`amine_qa_log` take a retrieve
callable, which is how the LangChain, LlamaIndex and Haystack integrations mine with their retrievers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from gumbel_rag.data.answers import answer_in_text
from gumbel_rag.data.files import json_safe
from gumbel_rag.data.formats import load_examples, write_qalog
from gumbel_rag.data.formats.qalog import fail, parse_candidate, read_rows
from gumbel_rag.data.schema import Candidate, DataError, LoadSummary, QAExample
from gumbel_rag.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Encoder",
    "Retriever",
    "amine_qa_log",
    "load_corpus",
    "mine_candidates",
    "mine_file",
    "mine_qa_log",
    "write_qalog_atomic",
]

# A user retriever maps (query, top_n) to corpus indices, Candidates or plain strings, best first.
RetrieverFn = Callable[[str, int], Sequence["int | Candidate | str"]]
Doc = TypeVar("Doc")
QALog = str | os.PathLike[str] | Iterable[QAExample]


class Encoder(Protocol):
    """A bi-encoder such as GumbelReranker: ``encode(texts)`` -> (len(texts), dim) embeddings."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts (normalised here anyway, so cosine is what ranks)."""
        ...


Retriever = Literal["bm25"] | RetrieverFn | Encoder
_QUERY_BATCH = 256


def load_corpus(path: str | Path) -> list[Candidate]:
    """A corpus: JSONL/JSON/CSV/Parquet rows of ``{text, id?, title?, metadata?}``, or .txt (a doc a line)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such corpus file: {path}")
    if p.name.lower().removesuffix(".gz").endswith(".txt"):
        corpus = _txt_corpus(p, str(path))
    else:
        rows, encoded = read_rows(p)
        corpus = []
        for line, row in rows:
            if isinstance(row, DataError):
                raise row
            corpus.append(parse_candidate(row, (str(path), line), "", encoded)[0])
    if not corpus:
        raise DataError("empty corpus: no documents", path=str(path), reason="empty file")
    return corpus


def _txt_corpus(p: Path, name: str) -> list[Candidate]:
    data = p.read_bytes().removeprefix(b"\xef\xbb\xbf")
    corpus = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise fail((name, number), None, f"not valid UTF-8 (offset {exc.start})", "not UTF-8") from None
        if text:
            corpus.append(Candidate(text=text))
    return corpus


# ----------------------------------------------------------------------------- retrievers


def _bm25(corpus: Sequence[Candidate], queries: Sequence[str], top_n: int) -> list[list[tuple[int, float]]]:
    if not queries:  # a process whose share of the questions is empty
        return []
    import bm25s

    index = bm25s.BM25()
    index.index(
        bm25s.tokenize([c.content for c in corpus], stopwords="en", show_progress=False), show_progress=False
    )
    # Queries go in as token strings so that they are looked up in the corpus vocabulary (tokenizing
    # them to ids separately would build a second, unrelated vocabulary).
    tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False, return_ids=False)
    docs, scores = index.retrieve(tokens, k=min(top_n, len(corpus)), show_progress=False)
    return [
        [(int(d), float(s)) for d, s in zip(row_docs, row_scores, strict=True)]
        for row_docs, row_scores in zip(docs, scores, strict=True)
    ]


def _encode_corpus(encoder: Encoder, texts: list[str], accelerator: Any | None) -> torch.Tensor:
    """Corpus embeddings; with several processes each encodes a contiguous share and all get the whole."""
    import torch

    if not _is_distributed(accelerator):
        return encoder.encode(texts).float()
    from accelerate.utils import gather_object

    with accelerator.split_between_processes(texts) as share:
        # A rank whose share is empty (corpus smaller than the world) still joins the gather.
        local = encoder.encode(share).float().cpu() if share else None
    # Moved to CPU first: a pickled CUDA tensor would unpickle onto the sender's device index.
    parts = [part for part in gather_object([local]) if part is not None]
    return torch.cat(parts)


def _dense(
    encoder: Encoder,
    corpus: Sequence[Candidate],
    queries: Sequence[str],
    top_n: int,
    accelerator: Any | None = None,
) -> list[list[tuple[int, float]]]:
    import torch

    if not queries and not _is_distributed(accelerator):
        return []
    docs = _encode_corpus(encoder, [c.content for c in corpus], accelerator)
    docs = torch.nn.functional.normalize(docs, dim=-1)
    results = []
    for start in range(0, len(queries), _QUERY_BATCH):
        q = torch.nn.functional.normalize(
            encoder.encode(list(queries[start : start + _QUERY_BATCH])).float(), dim=-1
        )
        scores, idx = (q @ docs.T).topk(min(top_n, len(corpus)), dim=-1)
        results.extend(
            [(int(i), float(s)) for i, s in zip(row_i, row_s, strict=True)]
            for row_i, row_s in zip(idx.tolist(), scores.tolist(), strict=True)
        )
    return results


def _is_distributed(accelerator: Any | None) -> bool:
    return accelerator is not None and accelerator.num_processes > 1


def _from_callable(
    fn: RetrieverFn, corpus: Sequence[Candidate], question: str, top_n: int
) -> list[Candidate]:
    out = []
    for item in list(fn(question, top_n))[:top_n]:
        if isinstance(item, Candidate):
            out.append(item)
        elif isinstance(item, str):
            out.append(Candidate(text=item))
        elif isinstance(item, Integral) and not isinstance(item, bool):
            if not 0 <= int(item) < len(corpus):
                raise IndexError(f"retriever returned index {item} for a corpus of {len(corpus)} documents")
            out.append(corpus[int(item)])
        else:
            raise TypeError(
                f"retriever returned {type(item).__name__}; expected an int index, a Candidate or a str"
            )
    return out


def _scored(corpus: Sequence[Candidate], hits: list[tuple[int, float]]) -> list[Candidate]:
    return [
        dataclasses.replace(corpus[i], metadata={**corpus[i].metadata, "retrieval_score": score})
        for i, score in hits
    ]


def mine_candidates(
    examples: Sequence[QAExample],
    corpus: Sequence[Candidate | str] | None,
    retriever: Retriever = "bm25",
    top_n: int = 10,
    gold_from_answer: bool = False,
    *,
    accelerator: Any | None = None,
) -> list[QAExample]:
    """Give every example without candidates the ``top_n`` corpus documents retrieved for its question.

    ``retriever``: "bm25" (bm25s), an encoder for dense retrieval (an object with ``encode(texts)``, e.g.
    ``GumbelReranker.from_pretrained()``), or a callable ``(question, top_n) -> indices | Candidates | strs``.
    ``corpus`` may be None for a callable that returns Candidates or strings (indices need a corpus).
    Examples that already have candidates are returned unchanged. Mined examples get ``gold`` = the
    candidates containing an answer when ``gold_from_answer``, else None (unknown).

    ``accelerator``: an ``accelerate.PartialState`` (or ``Accelerator``) of several processes splits the
    work: each process retrieves for a contiguous share of the questions (and, for dense retrieval,
    embeds a share of the corpus), and the results are gathered, so every process returns what a
    single process would, in the same order. Every process must call this with the same arguments.
    """
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ConfigError(f"top_n must be a positive integer, got {top_n!r}")
    if retriever == "dense":
        raise ConfigError(
            "retriever='dense' needs an encoder: pass the bi-encoder itself as the retriever, e.g. "
            "retriever=GumbelReranker.from_pretrained() (the data layer loads no model)"
        )
    docs = [c if isinstance(c, Candidate) else Candidate(text=c) for c in corpus or []]
    # A callable that returns documents (a framework's retriever) needs no corpus here.
    needs_corpus = isinstance(retriever, str) or hasattr(retriever, "encode")
    if not docs and needs_corpus:
        raise ValueError(
            "the corpus is empty" if corpus is not None else f"retriever {retriever!r} needs a corpus"
        )
    todo = [i for i, ex in enumerate(examples) if not ex.candidates]
    if isinstance(retriever, str) and retriever != "bm25":
        raise ConfigError(f"unknown retriever {retriever!r}; expected 'bm25', an encoder or a callable")
    if not isinstance(retriever, str) and not hasattr(retriever, "encode") and not callable(retriever):
        raise TypeError(f"retriever must be 'bm25', an encoder or a callable, got {type(retriever).__name__}")
    if not todo:
        mined: list[list[Candidate]] = []
    elif _is_distributed(accelerator):
        from accelerate.utils import gather_object

        # Contiguous shares in rank order, so the gathered lists are back in the original order.
        with accelerator.split_between_processes(todo) as share:
            local = _retrieve(docs, [examples[i].question for i in share], retriever, top_n, accelerator)
        mined = gather_object(local)
    else:
        mined = _retrieve(docs, [examples[i].question for i in todo], retriever, top_n, None)
    out = list(examples)
    for i, candidates in zip(todo, mined, strict=True):
        ex = examples[i]
        gold = None
        if gold_from_answer:
            gold = [j for j, c in enumerate(candidates) if answer_in_text(ex.answers, c.content)]
        out[i] = dataclasses.replace(ex, candidates=candidates, gold=gold)
    return out


def _retrieve(
    docs: Sequence[Candidate],
    questions: Sequence[str],
    retriever: Retriever,
    top_n: int,
    accelerator: Any | None,
) -> list[list[Candidate]]:
    """The candidates of each question, best first (one process's share under a launcher)."""
    if isinstance(retriever, str):
        return [_scored(docs, h) for h in _bm25(docs, questions, top_n)]
    if hasattr(retriever, "encode"):
        # Checked before callable(): a reranker is an nn.Module, whose __call__ is not a retriever.
        return [_scored(docs, h) for h in _dense(retriever, docs, questions, top_n, accelerator)]
    return [_from_callable(retriever, docs, q, top_n) for q in questions]


def mine_file(
    data_path: str | Path,
    corpus_path: str | Path,
    output_path: str | Path,
    retriever: Retriever = "bm25",
    top_n: int = 10,
    *,
    gold_from_answer: bool = False,
    skip_invalid: bool = False,
    accelerator: Any | None = None,
) -> LoadSummary:
    """Load a QA log, mine candidates for its rows from a corpus file, write the result as a QA log.

    With an ``accelerator`` of several processes (see :func:`mine_candidates`) the questions are
    split across them, and the main process alone writes one file, identical to a one-process run.
    """
    examples, summary = load_examples(data_path, skip_invalid=skip_invalid)
    corpus = load_corpus(corpus_path)
    mined = mine_candidates(
        examples,
        corpus,
        retriever,
        top_n=top_n,
        gold_from_answer=gold_from_answer,
        accelerator=accelerator,
    )
    if accelerator is None or accelerator.is_main_process:
        write_qalog_atomic(mined, output_path)
    if _is_distributed(accelerator):
        # Nobody returns before the file exists, so a launched script can read it right after.
        accelerator.wait_for_everyone()
    return summary


# ----------------------------------------------------------------------------- mining with any retriever


def write_qalog_atomic(examples: Iterable[QAExample], path: str | os.PathLike[str]) -> None:
    """``write_qalog`` to a temporary file next to ``path``, renamed over it only once complete.

    A failure half-way leaves the previous file as it was (or none), never a partial one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the extensions: they choose the format (.jsonl, .csv, .parquet, .gz ...).
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_qalog(examples, tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _load_log(qa_log: QALog, format: str, skip_invalid: bool) -> list[QAExample]:
    if isinstance(qa_log, str | os.PathLike):
        examples, _summary = load_examples(Path(qa_log), format=format, skip_invalid=skip_invalid)
        return list(examples)
    return list(qa_log)


def _pending(examples: Sequence[QAExample]) -> list[str]:
    # Only examples without candidates are mined; a question asked twice is retrieved once.
    return list(dict.fromkeys(ex.question for ex in examples if not ex.candidates))


def _as_candidates(
    documents: Iterable[Any], top_n: int, to_candidate: Callable[[Any], Candidate] | None
) -> list[Candidate]:
    out = []
    for doc in list(documents or [])[:top_n]:
        candidate = to_candidate(doc) if to_candidate is not None else doc
        if isinstance(candidate, str):
            candidate = Candidate(text=candidate)
        if not isinstance(candidate, Candidate):
            raise TypeError(
                f"the retriever returned {type(candidate).__name__}; pass to_candidate= to turn its "
                "documents into Candidates"
            )
        # What is written must read back the same: metadata JSON cannot hold becomes JSON-safe here.
        out.append(dataclasses.replace(candidate, metadata=json_safe(dict(candidate.metadata or {}))))
    return out


def _finish(
    examples: list[QAExample],
    retrieved: dict[str, list[Candidate]],
    output: str | os.PathLike[str],
    top_n: int,
    gold_from_answer: bool,
) -> list[QAExample]:
    if retrieved and not any(retrieved.values()):
        raise DataError(
            f"the retriever returned no documents for any of the {len(retrieved)} questions "
            "(is the document store empty?)",
            reason="nothing retrieved",
        )
    mined = examples
    if retrieved:
        mined = mine_candidates(
            examples, None, lambda q, n: retrieved[q][:n], top_n=top_n, gold_from_answer=gold_from_answer
        )
    write_qalog_atomic(mined, output)
    return list(mined)


def _check_mining(top_n: object, max_concurrency: object) -> None:
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ConfigError(f"top_n must be a positive integer, got {top_n!r}")
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
    ):
        raise ConfigError(f"max_concurrency must be a positive integer or None, got {max_concurrency!r}")


def mine_qa_log(
    qa_log: QALog,
    retrieve: Callable[[str, int], Iterable[Doc]],
    output: str | os.PathLike[str],
    *,
    top_n: int = 10,
    to_candidate: Callable[[Doc], Candidate] | None = None,
    gold_from_answer: bool = False,
    format: str = "auto",
    skip_invalid: bool = False,
    max_concurrency: int | None = None,
) -> list[QAExample]:
    """Retrieve ``top_n`` candidates for every question of a QA log without any, and write a QA log.

    ``qa_log``: a file :func:`~gumbel_rag.data.load_examples` reads (``format``, ``skip_invalid`` as
    there) or a list of examples; rows that already have candidates are kept as they are. ``retrieve(
    question, top_n)`` returns documents, best first (cut to ``top_n``); ``to_candidate`` turns one into a
    :class:`Candidate` (text, source id, metadata; ``None``: they already are Candidates or strings).
    ``max_concurrency`` retrieves that many questions at once in threads (``None``: one at a time).
    ``gold_from_answer`` marks the candidates that contain an answer as gold, else gold stays unknown.
    The output (format from its extension) is written atomically, metadata made JSON-safe; it is what
    ``gumbel-rag train --data`` reads. A retriever that returns nothing for every question is a DataError.
    Returns the written examples.
    """
    _check_mining(top_n, max_concurrency)
    examples = _load_log(qa_log, format, skip_invalid)
    questions = _pending(examples)

    def fetch(question: str) -> list[Candidate]:
        return _as_candidates(retrieve(question, top_n), top_n, to_candidate)

    if max_concurrency is not None and max_concurrency > 1 and len(questions) > 1:
        with ThreadPoolExecutor(max_concurrency) as pool:
            results = list(pool.map(fetch, questions))
    else:
        results = [fetch(q) for q in questions]
    return _finish(examples, dict(zip(questions, results, strict=True)), output, top_n, gold_from_answer)


async def amine_qa_log(
    qa_log: QALog,
    aretrieve: Callable[[str, int], Awaitable[Iterable[Doc]]],
    output: str | os.PathLike[str],
    *,
    top_n: int = 10,
    to_candidate: Callable[[Doc], Candidate] | None = None,
    gold_from_answer: bool = False,
    format: str = "auto",
    skip_invalid: bool = False,
    max_concurrency: int | None = 8,
) -> list[QAExample]:
    """Async :func:`mine_qa_log`: ``aretrieve`` runs for up to ``max_concurrency`` questions at once
    (``None``: all at once); reading and writing files run in a worker thread, off the event loop."""
    _check_mining(top_n, max_concurrency)
    examples = await asyncio.to_thread(_load_log, qa_log, format, skip_invalid)
    questions = _pending(examples)
    limit = asyncio.Semaphore(max_concurrency or max(1, len(questions)))

    async def fetch(question: str) -> list[Candidate]:
        async with limit:
            documents = await aretrieve(question, top_n)
        return _as_candidates(documents, top_n, to_candidate)

    results = await asyncio.gather(*(fetch(q) for q in questions))
    retrieved = dict(zip(questions, results, strict=True))
    return await asyncio.to_thread(_finish, examples, retrieved, output, top_n, gold_from_answer)
