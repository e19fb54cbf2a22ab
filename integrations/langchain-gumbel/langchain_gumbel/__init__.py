"""LangChain integration for gumbel-rag: a fine-tunable reranker as a document compressor, QA-log capture."""

from langchain_gumbel.mining import amine_qa_log, document_to_candidate, documents_to_candidates, mine_qa_log
from langchain_gumbel.qa_log import QALogCallbackHandler
from langchain_gumbel.rerank import GumbelRerank

__version__ = "0.1.0"

__all__ = [
    "GumbelRerank",
    "QALogCallbackHandler",
    "__version__",
    "amine_qa_log",
    "document_to_candidate",
    "documents_to_candidates",
    "mine_qa_log",
]
