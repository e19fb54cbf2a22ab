"""Turn a QA log plus any LlamaIndex retriever into training data for ``gumbel-rag train``."""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore
from llama_index.postprocessor.gumbel_rerank.base import RETRIEVAL_SCORE_KEY, node_text

from gumbel_rag.data import Candidate, QAExample, load_examples, mine_candidates, write_qalog

__all__ = ["amine_qa_log", "candidate_retriever", "mine_qa_log", "node_to_candidate"]

PathLike = str | os.PathLike[str]


def _json_safe(metadata: dict[str, Any]) -> dict[str, Any]:
    # A QA log is JSON: values it cannot hold (dates, paths, ...) are written as their str().
    return json.loads(json.dumps(metadata, default=str))


def node_to_candidate(
    node: BaseNode | NodeWithScore, metadata_mode: MetadataMode = MetadataMode.EMBED
) -> Candidate:
    """A gumbel-rag Candidate holding exactly the text GumbelRerank scores, the node id and its metadata.

    A NodeWithScore's retrieval score is added to the metadata as ``retrieval_score``, as gumbel-rag's
    own miners do.
    """
    score = node.score if isinstance(node, NodeWithScore) else None
    base = node.node if isinstance(node, NodeWithScore) else node
    metadata = _json_safe(dict(base.metadata))
    if score is not None:
        metadata[RETRIEVAL_SCORE_KEY] = float(score)
    # No Candidate.title: Candidate.content would prefix it to a text whose metadata header (per
    # metadata_mode) may already carry it, and the training text must equal what GumbelRerank scores.
    return Candidate(text=node_text(base, metadata_mode), id=base.node_id, metadata=metadata)


def candidate_retriever(
    retriever: BaseRetriever, *, metadata_mode: MetadataMode = MetadataMode.EMBED
) -> Callable[[str, int], list[Candidate]]:
    """Adapt a LlamaIndex retriever to the ``retriever(query, top_n)`` callable gumbel-rag's miner takes."""

    def retrieve(query: str, top_n: int) -> list[Candidate]:
        return [node_to_candidate(hit, metadata_mode) for hit in retriever.retrieve(query)[:top_n]]

    return retrieve


def _prepare(
    qa_log: PathLike | Sequence[QAExample], retriever: BaseRetriever, top_n: int, format: str
) -> list[QAExample]:
    if top_n <= 0:
        raise ValueError(f"top_n must be a positive integer, got {top_n}")
    k = getattr(retriever, "similarity_top_k", None)
    if isinstance(k, int) and k < top_n:
        warnings.warn(
            f"the retriever returns at most similarity_top_k={k} nodes, fewer than top_n={top_n}; "
            f"build it with similarity_top_k={top_n} to mine {top_n} candidates per question",
            stacklevel=3,
        )
    if isinstance(qa_log, str | os.PathLike):
        examples, _summary = load_examples(qa_log, format=format)
        return examples
    return list(qa_log)


def mine_qa_log(
    qa_log_path: PathLike | Sequence[QAExample],
    retriever: BaseRetriever,
    output_path: PathLike,
    top_n: int = 10,
    *,
    metadata_mode: MetadataMode = MetadataMode.EMBED,
    gold_from_answer: bool = False,
    format: str = "auto",
) -> list[QAExample]:
    """Retrieve candidates for each question of a QA log and write a QA log for ``gumbel-rag train``.

    ``qa_log_path``: any file ``gumbel_rag.data.load_examples`` reads, or already-loaded examples;
    rows that already have candidates are kept as they are. The retriever's hits are cut to ``top_n``.
    Use the ``metadata_mode`` of the GumbelRerank that will serve the fine-tuned model so that it is
    trained on the text it will score. ``gold_from_answer`` marks the candidates containing an answer
    as gold (else gold stays unknown). The output format follows the extension of ``output_path``.
    """
    examples = _prepare(qa_log_path, retriever, top_n, format)
    mined = mine_candidates(
        examples,
        None,
        retriever=candidate_retriever(retriever, metadata_mode=metadata_mode),
        top_n=top_n,
        gold_from_answer=gold_from_answer,
    )
    write_qalog(mined, output_path)
    return mined


async def amine_qa_log(
    qa_log_path: PathLike | Sequence[QAExample],
    retriever: BaseRetriever,
    output_path: PathLike,
    top_n: int = 10,
    *,
    metadata_mode: MetadataMode = MetadataMode.EMBED,
    gold_from_answer: bool = False,
    format: str = "auto",
    max_concurrency: int = 8,
) -> list[QAExample]:
    """Async :func:`mine_qa_log`: questions are retrieved concurrently with ``retriever.aretrieve``."""
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    examples = await asyncio.to_thread(_prepare, qa_log_path, retriever, top_n, format)
    questions = list(dict.fromkeys(ex.question for ex in examples if not ex.candidates))
    limit = asyncio.Semaphore(max_concurrency)

    async def fetch(question: str) -> list[NodeWithScore]:
        async with limit:
            return await retriever.aretrieve(question)

    hits = dict(zip(questions, await asyncio.gather(*(fetch(q) for q in questions)), strict=True))

    def lookup(question: str, n: int) -> list[Candidate]:
        return [node_to_candidate(hit, metadata_mode) for hit in hits[question][:n]]

    mined = mine_candidates(examples, None, retriever=lookup, top_n=top_n, gold_from_answer=gold_from_answer)
    await asyncio.to_thread(write_qalog, mined, output_path)
    return mined
