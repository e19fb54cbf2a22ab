"""Mine candidates for a QA log with any LangChain retriever, ready for ``gumbel-rag train``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from langchain_core.documents import Document
from langchain_core.retrievers import RetrieverLike
from langchain_core.vectorstores import VectorStoreRetriever

if TYPE_CHECKING:
    # Imported at run time inside the functions, so `import langchain_gumbel` stays light for reranking.
    from gumbel_rag.data import Candidate, QAExample

__all__ = ["amine_qa_log", "document_to_candidate", "documents_to_candidates", "mine_qa_log"]

QALog = str | os.PathLike[str] | Iterable["QAExample"]


def document_to_candidate(doc: Document) -> Candidate:
    """A LangChain document as a gumbel-rag candidate: its page_content, id and (JSON-safe) metadata."""
    from gumbel_rag.data import Candidate
    from gumbel_rag.data.files import json_safe

    # No title: training then sees exactly the page_content that GumbelRerank scores at inference.
    # A "title" metadata key stays in the metadata.
    text = doc.page_content if isinstance(doc.page_content, str) else ""
    return Candidate(
        text=text, id=None if doc.id is None else str(doc.id), metadata=json_safe(dict(doc.metadata or {}))
    )


def documents_to_candidates(documents: Sequence[Document]) -> list[Candidate]:
    """Turn LangChain documents into gumbel-rag candidates (text, id and metadata)."""
    return [document_to_candidate(doc) for doc in documents]


def _sized(retriever: RetrieverLike, top_n: int) -> RetrieverLike:
    # A vector-store retriever returns search_kwargs["k"] documents (4 by default): ask it for top_n.
    if isinstance(retriever, VectorStoreRetriever) and isinstance(top_n, int):
        return retriever.model_copy(update={"search_kwargs": {**retriever.search_kwargs, "k": top_n}})
    return retriever


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
    id and metadata, and is what ``gumbel-rag train --data OUTPUT`` reads. ``max_concurrency`` retrieves
    that many questions at once. Returns the written examples (see ``gumbel_rag.data.mine_qa_log``).
    """
    from gumbel_rag.data import mine_qa_log as core_mine_qa_log

    sized = _sized(retriever, top_n)
    return core_mine_qa_log(
        qa_log,
        lambda question, _n: sized.invoke(question),
        output_path,
        top_n=top_n,
        to_candidate=document_to_candidate,
        gold_from_answer=gold_from_answer,
        format=format,
        skip_invalid=skip_invalid,
        max_concurrency=max_concurrency,
    )


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
    """Async ``mine_qa_log``: retrieval runs via ``retriever.ainvoke``; file work runs off the event loop."""
    from gumbel_rag.data import amine_qa_log as core_amine_qa_log

    sized = _sized(retriever, top_n)
    return await core_amine_qa_log(
        qa_log,
        lambda question, _n: sized.ainvoke(question),
        output_path,
        top_n=top_n,
        to_candidate=document_to_candidate,
        gold_from_answer=gold_from_answer,
        format=format,
        skip_invalid=skip_invalid,
        max_concurrency=max_concurrency,
    )
