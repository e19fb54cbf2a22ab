"""G-Rerank loss: the frozen reader's answer loss under a Gumbel relaxed top-k document mask."""

from __future__ import annotations

import torch

from gumbel_rag.gumbel import relaxed_topk_log_mask
from gumbel_rag.losses.base import RerankLoss
from gumbel_rag.readers.base import Reader, ReaderBatch

__all__ = ["GumbelRerankLoss"]


class GumbelRerankLoss(RerankLoss):
    """End-to-end reranker loss of Gumbel Reranking (Huang et al., ACL 2025, arXiv 2502.11116).

    Inputs: reranker scores ``w`` (B, N) with grad, a bool mask (B, N) of real candidates, and a
    :class:`~gumbel_rag.readers.base.ReaderBatch` holding the reader's no-grad document states.

    ``M = max_{j<=k} softmax((kappa * w + G^(j)) / tau)`` with Gumbel noise ``G^(j)``, and

        L = -(1/|a|) sum_t log p_phi(a_t | a_<t, q, D; M),

    where the reader adds ``log M_i`` to the attention logits of document i's keys. The reader
    ``phi`` is frozen: the gradient only reaches ``w`` and through it the reranker.
    ``noise=False`` is the no-Gumbel ablation (deterministic successive relaxation).
    """

    def __init__(
        self, reader: Reader, k: int = 5, kappa: float = 0.25, tau: float = 1.0, noise: bool = True
    ) -> None:
        """Keep the reader (not registered as a submodule: it is frozen and never saved)."""
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.__dict__["reader"] = reader
        self.k, self.kappa, self.tau, self.noise = k, kappa, tau, noise

    def forward(
        self,
        scores: torch.Tensor,
        candidate_mask: torch.Tensor,
        reader_batch: ReaderBatch,
        generator: torch.Generator | None = None,
        gold: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean answer NLL per token over the batch (a scalar with grad into ``scores``)."""
        log_mask = relaxed_topk_log_mask(
            scores.float(),
            self.k,
            kappa=self.kappa,
            tau=self.tau,
            mask=candidate_mask,
            noise=self.noise,
            generator=generator,
        )
        return self.reader.answer_loss(reader_batch, log_mask.to(self.reader.device)).mean()

    def extra_repr(self) -> str:
        """Show the hyperparameters in ``print(loss)``."""
        return f"k={self.k}, kappa={self.kappa}, tau={self.tau}, noise={self.noise}"
