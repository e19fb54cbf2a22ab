"""Mining candidates for QA logs that have none: BM25, a dense bi-encoder, or any retriever callable."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gumbel_rag.data.answers import answer_in_text
from gumbel_rag.data.formats import load_examples, write_qalog
from gumbel_rag.data.formats.qalog import fail, parse_candidate, read_rows
from gumbel_rag.data.schema import Candidate, DataError, LoadSummary, QAExample

if TYPE_CHECKING:
    import torch

__all__ = ["Encoder", "Retriever", "load_corpus", "mine_candidates", "mine_file"]

# A user retriever maps (query, top_n) to corpus indices, Candidates or plain strings, best first.
RetrieverFn = Callable[[str, int], Sequence["int | Candidate | str"]]


class Encoder(Protocol):
    """A bi-encoder such as GumbelReranker: ``encode(texts)`` -> (len(texts), dim) embeddings."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts (normalised here anyway, so cosine is what ranks)."""
        ...


Retriever = Literal["bm25", "dense"] | RetrieverFn | Encoder
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


def _default_encoder(accelerator: Any | None = None) -> Encoder:
    from gumbel_rag.reranker import GumbelReranker

    # Under a launcher every process encodes on its own device (its GPU), not all on the first one.
    return GumbelReranker.from_pretrained(device=accelerator.device if accelerator is not None else None)


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

    ``retriever``: "bm25" (bm25s), "dense" (the default bi-encoder), an object with ``encode(texts)``
    (e.g. a fine-tuned GumbelReranker), or a callable ``(question, top_n) -> indices | Candidates | strs``.
    ``corpus`` may be None for a callable that returns Candidates or strings (indices need a corpus).
    Examples that already have candidates are returned unchanged. Mined examples get ``gold`` = the
    candidates containing an answer when ``gold_from_answer``, else None (unknown).

    ``accelerator``: an ``accelerate.PartialState`` (or ``Accelerator``) of several processes splits the
    work: each process retrieves for a contiguous share of the questions (and, for dense retrieval,
    embeds a share of the corpus), and the results are gathered, so every process returns what a
    single process would, in the same order. Every process must call this with the same arguments.
    """
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    docs = [c if isinstance(c, Candidate) else Candidate(text=c) for c in corpus or []]
    # A callable that returns documents (a framework's retriever) needs no corpus here.
    needs_corpus = isinstance(retriever, str) or hasattr(retriever, "encode")
    if not docs and needs_corpus:
        raise ValueError(
            "the corpus is empty" if corpus is not None else f"retriever {retriever!r} needs a corpus"
        )
    todo = [i for i, ex in enumerate(examples) if not ex.candidates]
    if isinstance(retriever, str) and retriever not in ("bm25", "dense"):
        raise ValueError(f"unknown retriever {retriever!r}; expected 'bm25', 'dense' or a callable")
    if not isinstance(retriever, str) and not hasattr(retriever, "encode") and not callable(retriever):
        raise TypeError(
            f"retriever must be 'bm25', 'dense', an encoder or a callable, got {type(retriever).__name__}"
        )
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
        if retriever == "bm25":
            return [_scored(docs, h) for h in _bm25(docs, questions, top_n)]
        encoder = _default_encoder(accelerator)
        return [_scored(docs, h) for h in _dense(encoder, docs, questions, top_n, accelerator)]
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
        write_qalog(mined, output_path)
    if _is_distributed(accelerator):
        # Nobody returns before the file exists, so a launched script can read it right after.
        accelerator.wait_for_everyone()
    return summary
