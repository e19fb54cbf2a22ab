"""Listwise cross-entropy on gold labels: the supervised upper reference when a data set has labels."""

from __future__ import annotations

import torch

from gumbel_rag.losses.base import RerankLoss
from gumbel_rag.losses.distillation import document_log_probs
from gumbel_rag.readers.base import ReaderBatch

__all__ = ["SupervisedListwiseLoss"]


class SupervisedListwiseLoss(RerankLoss):
    """ListNet-style listwise loss (Cao et al., ICML 2007) with a uniform target over the gold candidates.

    Inputs: reranker scores ``w`` (B, N) with grad, the (B, N) bool candidate mask and ``gold`` (B, N) bool.
    With ``p_theta = softmax(w / T)`` over the real candidates and G_b the gold set of row b,

        L = mean_b -(1/|G_b|) sum_{i in G_b} log p_theta(d_i | q).

    Rows without a gold candidate contribute nothing. The reader is not used.
    """

    needs_reader = False
    needs_gold = True

    def __init__(self, temperature: float = 1.0) -> None:
        """Keep the temperature T of p_theta."""
        super().__init__()
        self.temperature = temperature

    def forward(
        self,
        scores: torch.Tensor,
        candidate_mask: torch.Tensor,
        reader_batch: ReaderBatch | None = None,
        generator: torch.Generator | None = None,
        gold: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over labelled rows of the gold candidates' negative log-probability."""
        if gold is None:
            raise ValueError("SupervisedListwiseLoss needs gold labels (a (B, N) bool tensor)")
        if gold.shape != candidate_mask.shape:
            raise ValueError(f"gold has shape {tuple(gold.shape)}, expected {tuple(candidate_mask.shape)}")
        gold = gold.to(scores.device) & candidate_mask
        log_p = document_log_probs(scores, candidate_mask, self.temperature)
        counts = gold.sum(-1)
        per_row = -torch.where(gold, log_p, torch.zeros_like(log_p)).sum(-1) / counts.clamp(min=1)
        labelled = counts > 0
        if not labelled.any():
            return scores.sum() * 0.0  # keeps the graph so backward() still works on an unlabelled batch
        return per_row[labelled].mean()

    def extra_repr(self) -> str:
        """Show the temperature in ``print(loss)``."""
        return f"temperature={self.temperature}"
