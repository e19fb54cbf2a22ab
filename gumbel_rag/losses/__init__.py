"""Training losses for rerankers; one loss per module."""

from gumbel_rag.losses.gumbel import GumbelRerankLoss

__all__ = ["GumbelRerankLoss"]
