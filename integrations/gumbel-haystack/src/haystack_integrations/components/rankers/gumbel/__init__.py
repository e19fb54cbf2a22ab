"""Haystack integration of gumbel-rag: `GumbelRanker` and QA-log mining for fine-tuning it."""

from .mining import candidate_retriever, document_retriever, document_to_candidate, mine_qa_log
from .ranker import GumbelRanker, document_text

__all__ = [
    "GumbelRanker",
    "candidate_retriever",
    "document_retriever",
    "document_text",
    "document_to_candidate",
    "mine_qa_log",
]
