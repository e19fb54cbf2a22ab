"""gumbel-rag: fine-tune RAG rerankers end to end from question/answer pairs (Gumbel Reranking)."""

from gumbel_rag.gumbel import gumbel_noise, relaxed_topk_log_mask, relaxed_topk_mask
from gumbel_rag.reranker import GumbelReranker, RankedDocument

__version__ = "0.1.0"

__all__ = [
    "GumbelReranker",
    "RankedDocument",
    "__version__",
    "gumbel_noise",
    "relaxed_topk_log_mask",
    "relaxed_topk_mask",
]
