"""A guard against forgetting: keep each question's candidate ranking near the starting reranker's."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from gumbel_rag.defaults import DEFAULT_ANCHOR_TEMPERATURE
from gumbel_rag.losses.base import RerankLoss, candidate_texts, check_positive
from gumbel_rag.losses.distillation import document_log_probs, kl_to_teacher

if TYPE_CHECKING:
    from gumbel_rag.data import QAExample
    from gumbel_rag.readers.base import Reader
    from gumbel_rag.reranker import GumbelReranker

__all__ = ["AnchoredLoss"]


class AnchoredLoss(RerankLoss):
    """Any training loss plus a KL term towards a frozen copy of the starting reranker.

    Inputs: reranker scores ``w`` (B, N) with grad and the (B, N) candidate mask; ``prepare`` adds the
    frozen reference's scores ``w0`` to what the wrapped loss prepares. With ``p(w) = softmax(w / T)`` over
    each question's real candidates,

        L = L_base(w) + lambda * mean_b KL( p(w0_b) || p(w_b) ),

    the trust-region term of KL-regularised fine-tuning (as in RLHF's reference-model penalty; for
    retrieval, compare "forgetting-aware" distillation to the initial model): the method may move the
    ranking where its own loss gains, and pays for every other change. The reference is a deep copy of the
    reranker taken when the loss is built (so build it before training starts); it is never trained,
    saved or synchronised across processes.
    """

    def __init__(
        self,
        base: RerankLoss,
        reranker: GumbelReranker,
        weight: float,
        temperature: float = DEFAULT_ANCHOR_TEMPERATURE,
    ) -> None:
        """Wrap ``base`` and freeze a copy of ``reranker`` (its current weights) as the reference."""
        super().__init__()
        if isinstance(base, AnchoredLoss):
            raise ValueError("the loss is anchored already")
        self.base = base
        reference = copy.deepcopy(reranker).eval().requires_grad_(False)
        self.__dict__["reference"] = reference
        self.weight = check_positive("anchor_weight", weight)
        self.temperature = check_positive("anchor_temperature", temperature)

    @property
    def method(self) -> str:  # type: ignore[override]
        """The wrapped loss's method name."""
        return self.base.method

    @property
    def reader(self) -> Reader | None:
        """The wrapped loss's reader."""
        return self.base.reader

    def skip_reason(self, example: QAExample) -> str | None:
        """The wrapped loss's rule: the anchor can keep any row, it cannot make one teach."""
        return self.base.skip_reason(example)

    @torch.no_grad()
    def prepare(self, examples: Sequence[QAExample]) -> tuple[Any, torch.Tensor]:
        """The wrapped loss's inputs and the reference scores (B, N) of the examples' candidates."""
        reference = self.__dict__["reference"]
        scores, _ = reference([ex.question for ex in examples], candidate_texts(examples))
        return self.base.prepare(examples), scores.float()

    def forward(
        self,
        scores: torch.Tensor,
        candidate_mask: torch.Tensor,
        prepared: tuple[Any, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The wrapped loss plus ``weight`` times the mean KL from the reference ranking to the current."""
        base_inputs, reference_scores = prepared
        loss = self.base(scores, candidate_mask, base_inputs, generator=generator)
        current = document_log_probs(scores, candidate_mask, self.temperature)
        teacher = reference_scores.to(scores.device) / self.temperature
        return loss + self.weight * kl_to_teacher(current, teacher, candidate_mask)

    def options(self) -> dict[str, Any]:
        """The wrapped loss's options plus the anchor's."""
        return {**self.base.options(), "anchor_weight": self.weight, "anchor_temperature": self.temperature}
