"""Turn a QA log plus any LlamaIndex retriever into training data for ``gumbel-rag train``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore
from llama_index.postprocessor.gumbel_rerank.base import RETRIEVAL_SCORE_KEY, node_text

from gumbel_rag.data import Candidate, QAExample
from gumbel_rag.data import amine_qa_log as core_amine_qa_log
from gumbel_rag.data import mine_qa_log as core_mine_qa_log
from gumbel_rag.data.files import json_safe

__all__ = ["amine_qa_log", "candidate_retriever", "mine_qa_log", "node_to_candidate"]

PathLike = str | os.PathLike[str]
NODE_ID_KEY = "node_id"


def node_to_candidate(
    node: BaseNode | NodeWithScore, metadata_mode: MetadataMode = MetadataMode.EMBED
) -> Candidate:
    """A gumbel-rag Candidate holding exactly the text GumbelRerank scores, its source id and metadata.

    The id is the source document's (``ref_doc_id``), so that a mined candidate traces back to your
    documents; the node's own id goes into the metadata as ``node_id`` (for a node without a source
    document it is the id). A NodeWithScore's retrieval score is added to the metadata as
    ``retrieval_score``, as gumbel-rag's own miners do.
    """
    score = node.score if isinstance(node, NodeWithScore) else None
    base = node.node if isinstance(node, NodeWithScore) else node
    metadata = json_safe(dict(base.metadata))
    source = base.ref_doc_id
    if source is not None and source != base.node_id:
        metadata[NODE_ID_KEY] = base.node_id
    if score is not None:
        metadata[RETRIEVAL_SCORE_KEY] = float(score)
    # No Candidate.title: Candidate.content would prefix it to a text whose metadata header (per
    # metadata_mode) may already carry it, and the training text must equal what GumbelRerank scores.
    return Candidate(text=node_text(base, metadata_mode), id=source or base.node_id, metadata=metadata)


def candidate_retriever(
    retriever: BaseRetriever, *, metadata_mode: MetadataMode = MetadataMode.EMBED
) -> Callable[[str, int], list[Candidate]]:
    """Adapt a LlamaIndex retriever to the ``retriever(query, top_n)`` callable gumbel-rag's miner takes."""

    def retrieve(query: str, top_n: int) -> list[Candidate]:
        return [node_to_candidate(hit, metadata_mode) for hit in retriever.retrieve(query)[:top_n]]

    return retrieve


def _warn_if_short(retriever: BaseRetriever, top_n: int) -> None:
    k = getattr(retriever, "similarity_top_k", None)
    if isinstance(k, int) and isinstance(top_n, int) and k < top_n:
        warnings.warn(
            f"the retriever returns at most similarity_top_k={k} nodes, fewer than top_n={top_n}; "
            f"build it with similarity_top_k={top_n} to mine {top_n} candidates per question",
            stacklevel=3,
        )


def mine_qa_log(
    qa_log_path: PathLike | Sequence[QAExample],
    retriever: BaseRetriever,
    output_path: PathLike,
    top_n: int = 10,
    *,
    metadata_mode: MetadataMode = MetadataMode.EMBED,
    gold_from_answer: bool = False,
    format: str = "auto",
    skip_invalid: bool = False,
    max_concurrency: int | None = None,
) -> list[QAExample]:
    """Retrieve candidates for each question of a QA log and write a QA log for ``gumbel-rag train``.

    ``qa_log_path``: any file ``gumbel_rag.data.load_examples`` reads, or already-loaded examples;
    rows that already have candidates are kept as they are. The retriever's hits are cut to ``top_n``.
    Use the ``metadata_mode`` of the GumbelRerank that will serve the fine-tuned model so that it is
    trained on the text it will score. ``gold_from_answer`` marks the candidates containing an answer
    as gold (else gold stays unknown). The output format follows the extension of ``output_path``.
    """
    _warn_if_short(retriever, top_n)
    return core_mine_qa_log(
        qa_log_path,
        lambda question, _n: retriever.retrieve(question),
        output_path,
        top_n=top_n,
        to_candidate=lambda hit: node_to_candidate(hit, metadata_mode),
        gold_from_answer=gold_from_answer,
        format=format,
        skip_invalid=skip_invalid,
        max_concurrency=max_concurrency,
    )


async def amine_qa_log(
    qa_log_path: PathLike | Sequence[QAExample],
    retriever: BaseRetriever,
    output_path: PathLike,
    top_n: int = 10,
    *,
    metadata_mode: MetadataMode = MetadataMode.EMBED,
    gold_from_answer: bool = False,
    format: str = "auto",
    skip_invalid: bool = False,
    max_concurrency: int = 8,
) -> list[QAExample]:
    """Async :func:`mine_qa_log`: questions are retrieved concurrently with ``retriever.aretrieve``."""
    _warn_if_short(retriever, top_n)
    return await core_amine_qa_log(
        qa_log_path,
        lambda question, _n: retriever.aretrieve(question),
        output_path,
        top_n=top_n,
        to_candidate=lambda hit: node_to_candidate(hit, metadata_mode),
        gold_from_answer=gold_from_answer,
        format=format,
        skip_invalid=skip_invalid,
        max_concurrency=max_concurrency,
    )
