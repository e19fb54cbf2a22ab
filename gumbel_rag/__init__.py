"""gumbel-rag: fine-tune RAG rerankers end to end from question/answer pairs (Gumbel Reranking)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names are imported on first use, so `import gumbel_rag.data` does not pay for torch and
# sentence-transformers.
_LAZY = {
    "GumbelReranker": "gumbel_rag.reranker",
    "RankedDocument": "gumbel_rag.reranker",
    "gumbel_noise": "gumbel_rag.gumbel",
    "relaxed_topk_log_mask": "gumbel_rag.gumbel",
    "relaxed_topk_mask": "gumbel_rag.gumbel",
}

__all__ = [
    "GumbelReranker",
    "RankedDocument",
    "__version__",
    "gumbel_noise",
    "relaxed_topk_log_mask",
    "relaxed_topk_mask",
]

if TYPE_CHECKING:
    from gumbel_rag.gumbel import gumbel_noise, relaxed_topk_log_mask, relaxed_topk_mask
    from gumbel_rag.reranker import GumbelReranker, RankedDocument


def __getattr__(name: str) -> Any:
    """Import public names lazily (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gumbel_rag' has no attribute {name!r}")
