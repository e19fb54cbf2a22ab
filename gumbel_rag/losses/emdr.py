"""EMDR2: the reader's per-token answer likelihood marginalised over documents drawn from the reranker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gumbel_rag.defaults import DEFAULT_TEMPERATURE
from gumbel_rag.losses.base import ReaderLoss, check_positive
from gumbel_rag.losses.distillation import document_log_probs, single_document_log_masks

if TYPE_CHECKING:
    from gumbel_rag.readers.base import Reader, ReaderBatch

__all__ = ["EMDRLoss"]


class EMDRLoss(ReaderLoss):
    """EMDR2, end-to-end multi-document reader and retriever training (Singh et al., NeurIPS 2021).

    arXiv 2106.05346.

    Inputs: reranker scores ``w`` (B, N) with grad, the (B, N) bool mask of real candidates and the reader's
    prepared batch. With ``p_theta(d_i|q) = softmax(w / T)`` and the frozen reader reading one document at a
    time,

        L = -(1/|a|) sum_t log sum_i p_theta(d_i|q) * p_phi(a_t | a_<t, q, d_i).

    The N single-document answer passes run without grad; the gradient reaches ``w`` through ``p_theta``.
    """

    method = "emdr"

    def __init__(self, reader: Reader, temperature: float = DEFAULT_TEMPERATURE) -> None:
        """Keep the frozen reader (not a submodule) and the temperature T of p_theta."""
        super().__init__(reader)
        self.temperature = check_positive("temperature", temperature)

    def forward(
        self,
        scores: torch.Tensor,
        candidate_mask: torch.Tensor,
        prepared: ReaderBatch,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean over the batch of the marginal answer NLL per token."""
        with torch.no_grad():
            per_doc = [
                self.reader.answer_token_logprobs(prepared, m.to(self.reader.device))
                for m in single_document_log_masks(candidate_mask)
            ]
        token_logp = torch.stack([lp for lp, _ in per_doc], dim=1).float().to(scores.device)  # (B, N, A)
        answer_mask = per_doc[0][1].to(scores.device) if per_doc else None
        log_p = document_log_probs(scores, candidate_mask, self.temperature)  # (B, N)
        joint = torch.logsumexp(log_p[..., None] + token_logp, dim=1)  # (B, A)
        has_docs = candidate_mask.any(dim=1, keepdim=True)
        weights = (answer_mask & has_docs).float()
        joint = torch.where(weights > 0, joint, torch.zeros_like(joint))
        per_row = -(joint * weights).sum(-1) / weights.sum(-1).clamp(min=1)
        return per_row.mean()

    def options(self) -> dict[str, Any]:
        """The method name and the temperature."""
        return {"method": self.method, "temperature": self.temperature}
