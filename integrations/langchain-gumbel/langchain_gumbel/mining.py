"""Mine candidates for a QA log with any LangChain retriever, ready for ``gumbel-rag train``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document
from langchain_core.retrievers import RetrieverLike
from langchain_core.runnables import RunnableConfig, run_in_executor
from langchain_core.vectorstores import VectorStoreRetriever

if TYPE_CHECKING:
    # Imported at run time inside the functions, so `import langchain_gumbel` stays light for reranking.
    from gumbel_rag.data import Candidate, QAExample

__all__ = ["amine_qa_log", "documents_to_candidates", "mine_qa_log"]

QALog = str | os.PathLike[str] | Iterable["QAExample"]


def documents_to_candidates(documents: Sequence[Document]) -> list[Candidate]:
    """Turn LangChain documents into gumbel-rag candidates (text, id and JSON-safe metadata)."""
    from gumbel_rag.data import Candidate

    candidates = []
    for doc in documents:
        # No title: training then sees exactly the page_content that GumbelRerank scores at inference.
        # A "title" metadata key stays in the metadata.
        doc_id = None if doc.id is None else str(doc.id)
        text = doc.page_content if isinstance(doc.page_content, str) else ""
        candidates.append(Candidate(text=text, id=doc_id, metadata=_json_safe(doc.metadata)))
    return candidates


def _json_safe(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata as it will read back from JSONL: values JSON cannot hold (dates, objects) become strings."""
    return json.loads(json.dumps(metadata or {}, default=str))


def _check_top_n(top_n: int) -> None:
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n <= 0:
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")


def _load(qa_log: QALog, format: str, skip_invalid: bool) -> list[QAExample]:
    if isinstance(qa_log, str | os.PathLike):
        from gumbel_rag.data import load_examples

        examples, _summary = load_examples(Path(qa_log), format=format, skip_invalid=skip_invalid)
        return list(examples)
    return list(qa_log)


def _questions(examples: Sequence[QAExample]) -> list[str]:
    # Examples that already have candidates are kept as they are, so only the others are retrieved for.
    return list(dict.fromkeys(ex.question for ex in examples if not ex.candidates))


def _sized(retriever: RetrieverLike, top_n: int) -> RetrieverLike:
    # A vector-store retriever returns search_kwargs["k"] documents (4 by default): ask it for top_n.
    if isinstance(retriever, VectorStoreRetriever):
        return retriever.model_copy(update={"search_kwargs": {**retriever.search_kwargs, "k": top_n}})
    return retriever


def _config(max_concurrency: int | None) -> RunnableConfig:
    return {"max_concurrency": max_concurrency} if max_concurrency else {}


def _finish(
    examples: list[QAExample],
    questions: list[str],
    results: Sequence[Sequence[Document]],
    output_path: str | os.PathLike[str],
    top_n: int,
    gold_from_answer: bool,
) -> list[QAExample]:
    from gumbel_rag.data import mine_candidates, write_qalog

    retrieved = {
        question: documents_to_candidates(list(docs)[:top_n])
        for question, docs in zip(questions, results, strict=True)
    }
    if questions and not any(retrieved.values()):
        raise ValueError(f"the retriever returned no documents for any of the {len(questions)} questions")
    mined = examples
    if questions:
        # No corpus: the retriever hands mine_candidates the retrieved Candidates themselves.
        mined = mine_candidates(
            examples,
            None,
            retriever=lambda question, n: retrieved[question][:n],
            top_n=top_n,
            gold_from_answer=gold_from_answer,
        )
    write_qalog(mined, Path(output_path))
    return list(mined)


def mine_qa_log(
    qa_log: QALog,
    retriever: RetrieverLike,
    output_path: str | os.PathLike[str],
    *,
    top_n: int = 10,
    gold_from_answer: bool = False,
    format: str = "auto",
    skip_invalid: bool = False,
    max_concurrency: int | None = None,
) -> list[QAExample]:
    """Retrieve ``top_n`` candidates per question with any LangChain retriever and write a QA log.

    ``qa_log`` is a file ``gumbel_rag.data.load_examples`` reads (a JSONL/JSON/CSV/Parquet QA log,
    HotpotQA, MuSiQue) or a list of ``QAExample``. Examples that already have candidates are kept
    unchanged. The written file (format from its extension, e.g. ``.jsonl``) keeps each document's text,
    id and metadata, and is what ``gumbel-rag train --data OUTPUT`` reads. Returns the written examples.
    """
    _check_top_n(top_n)
    examples = _load(qa_log, format, skip_invalid)
    questions = _questions(examples)
    results = _sized(retriever, top_n).batch(questions, config=_config(max_concurrency)) if questions else []
    return _finish(examples, questions, results, output_path, top_n, gold_from_answer)


async def amine_qa_log(
    qa_log: QALog,
    retriever: RetrieverLike,
    output_path: str | os.PathLike[str],
    *,
    top_n: int = 10,
    gold_from_answer: bool = False,
    format: str = "auto",
    skip_invalid: bool = False,
    max_concurrency: int | None = None,
) -> list[QAExample]:
    """Async ``mine_qa_log``: retrieval runs via ``retriever.abatch``; file work runs off the event loop."""
    _check_top_n(top_n)
    examples = await run_in_executor(None, _load, qa_log, format, skip_invalid)
    questions = _questions(examples)
    retriever = _sized(retriever, top_n)
    results = await retriever.abatch(questions, config=_config(max_concurrency)) if questions else []
    return await run_in_executor(
        None, _finish, examples, questions, results, output_path, top_n, gold_from_answer
    )
