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
    "TrainConfig": "gumbel_rag.trainer",
    "TrainResult": "gumbel_rag.trainer",
    "train": "gumbel_rag.trainer",
    "RerankLoss": "gumbel_rag.losses",
    "GumbelRerankLoss": "gumbel_rag.losses",
    "build_loss": "gumbel_rag.losses",
    "load_reader": "gumbel_rag.readers",
    "Candidate": "gumbel_rag.data",
    "QAExample": "gumbel_rag.data",
    "load_examples": "gumbel_rag.data",
    "gumbel_noise": "gumbel_rag.gumbel",
    "relaxed_topk_log_mask": "gumbel_rag.gumbel",
    "relaxed_topk_mask": "gumbel_rag.gumbel",
}

__all__ = [
    "Candidate",
    "GumbelRerankLoss",
    "GumbelReranker",
    "QAExample",
    "RankedDocument",
    "RerankLoss",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "build_loss",
    "gumbel_noise",
    "load_examples",
    "load_reader",
    "relaxed_topk_log_mask",
    "relaxed_topk_mask",
    "train",
]

if TYPE_CHECKING:
    from gumbel_rag.data import Candidate, QAExample, load_examples
    from gumbel_rag.gumbel import gumbel_noise, relaxed_topk_log_mask, relaxed_topk_mask
    from gumbel_rag.losses import GumbelRerankLoss, RerankLoss, build_loss
    from gumbel_rag.readers import load_reader
    from gumbel_rag.reranker import GumbelReranker, RankedDocument
    from gumbel_rag.trainer import TrainConfig, TrainResult, train


def __getattr__(name: str) -> Any:
    """Import public names lazily (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gumbel_rag' has no attribute {name!r}")
