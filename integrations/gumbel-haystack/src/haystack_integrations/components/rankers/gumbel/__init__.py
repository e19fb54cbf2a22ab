"""Haystack integration of gumbel-rag: `GumbelRanker`, and QA-log mining and capture for fine-tuning it."""

from .mining import candidate_retriever, document_retriever, document_to_candidate, mine_qa_log
from .qa_log import QALogRecorder
from .ranker import GumbelRanker, document_text

__all__ = [
    "GumbelRanker",
    "QALogRecorder",
    "candidate_retriever",
    "document_retriever",
    "document_text",
    "document_to_candidate",
    "mine_qa_log",
]
