"""LlamaIndex integration for gumbel-rag: a reranking node postprocessor, QA-log mining and capture."""

from llama_index.postprocessor.gumbel_rerank.base import DEFAULT_MODEL_NAME, GumbelRerank, node_text
from llama_index.postprocessor.gumbel_rerank.mining import (
    amine_qa_log,
    candidate_retriever,
    mine_qa_log,
    node_to_candidate,
)
from llama_index.postprocessor.gumbel_rerank.qa_log import QALogEventHandler, QALogSpanHandler

__all__ = [
    "DEFAULT_MODEL_NAME",
    "GumbelRerank",
    "QALogEventHandler",
    "QALogSpanHandler",
    "amine_qa_log",
    "candidate_retriever",
    "mine_qa_log",
    "node_text",
    "node_to_candidate",
]
