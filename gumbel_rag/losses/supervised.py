"""Listwise cross-entropy on gold labels: the supervised upper reference when a data set has labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from gumbel_rag.defaults import DEFAULT_TEMPERATURE
from gumbel_rag.losses.base import RerankLoss, check_positive
from gumbel_rag.losses.distillation import document_log_probs

if TYPE_CHECKING:
    from gumbel_rag.data import QAExample

__all__ = ["SupervisedListwiseLoss", "gold_mask"]


def gold_mask(examples: Sequence[QAExample]) -> torch.Tensor:
    """(B, N) bool tensor of each example's gold candidates, N the largest candidate count."""
    width = max((len(ex.candidates) for ex in examples), default=0)
    gold = torch.zeros(len(examples), width, dtype=torch.bool)
    for row, ex in enumerate(examples):
        gold[row, list(ex.gold or [])] = True
    return gold


class SupervisedListwiseLoss(RerankLoss):
    """ListNet-style listwise loss (Cao et al., ICML 2007) with a uniform target over the gold candidates.

    Inputs: reranker scores ``w`` (B, N) with grad, the (B, N) bool candidate mask and ``gold`` (B, N) bool
    (what :meth:`prepare` returns). With ``p_theta = softmax(w / T)`` over the real candidates and G_b the
    gold set of row b,

        L = mean_b -(1/|G_b|) sum_{i in G_b} log p_theta(d_i | q).

    Rows without a gold candidate are skipped before training. The reader is not used.
    """

    method = "supervised"

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE) -> None:
        """Keep the temperature T of p_theta."""
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def prepare(self, examples: Sequence[QAExample]) -> torch.Tensor:
        """The (B, N) gold mask of the examples."""
        return gold_mask(examples)

    @classmethod
    def row_problem(cls, example: QAExample, **options: Any) -> str | None:
        """Rows without a gold candidate (and rows with fewer than two candidates) teach nothing."""
        return super().row_problem(example, **options) or (None if example.gold else "no gold candidate")

    def forward(
        self,
        scores: torch.Tensor,
        candidate_mask: torch.Tensor,
        prepared: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean over labelled rows of the gold candidates' negative log-probability."""
        gold = prepared
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

    def options(self) -> dict[str, Any]:
        """The method name and the temperature."""
        return {"method": self.method, "temperature": self.temperature}
