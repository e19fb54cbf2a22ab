"""G-Rerank loss: the frozen reader's answer loss under a Gumbel relaxed top-k document mask."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gumbel_rag.data import filter_trainable
from gumbel_rag.defaults import DEFAULT_K, DEFAULT_KAPPA, DEFAULT_TAU
from gumbel_rag.gumbel import relaxed_topk_log_mask
from gumbel_rag.losses.base import ReaderLoss, check_finite, check_positive

if TYPE_CHECKING:
    from gumbel_rag.data import QAExample
    from gumbel_rag.readers.base import Reader, ReaderBatch

__all__ = ["GumbelRerankLoss"]


class GumbelRerankLoss(ReaderLoss):
    """End-to-end reranker loss of Gumbel Reranking (Huang et al., ACL 2025, arXiv 2502.11116).

    Inputs: reranker scores ``w`` (B, N) with grad, a bool mask (B, N) of real candidates, and a
    :class:`~gumbel_rag.readers.base.ReaderBatch` holding the reader's no-grad document states.

    ``M = max_{j<=k} softmax((kappa * w + G^(j)) / tau)`` with Gumbel noise ``G^(j)``, and

        L = -(1/|a|) sum_t log p_phi(a_t | a_<t, q, D; M),

    where the reader adds ``log M_i`` to the attention logits of document i's keys. The reader
    ``phi`` is frozen: the gradient only reaches ``w`` and through it the reranker.
    ``noise=False`` is the no-Gumbel ablation (deterministic successive relaxation).
    """

    method = "gumbel"

    def __init__(
        self,
        reader: Reader,
        k: int = DEFAULT_K,
        kappa: float = DEFAULT_KAPPA,
        tau: float = DEFAULT_TAU,
        noise: bool = True,
    ) -> None:
        """Keep the reader (not registered as a submodule: it is frozen and never saved)."""
        super().__init__(reader)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k, self.noise = k, bool(noise)
        self.kappa = check_finite("kappa", kappa)
        self.tau = check_positive("tau", tau)

    @classmethod
    def row_problem(cls, example: QAExample, k: int = DEFAULT_K, **options: Any) -> str | None:
        """Rows with no answer or at most k candidates (a top k keeps all of them, whatever the scores)."""
        kept, summary = filter_trainable([example], k)
        return None if kept else next(iter(summary.skipped))

    def forward(
        self,
        scores: torch.Tensor,
        candidate_mask: torch.Tensor,
        prepared: ReaderBatch,
        generator: torch.Generator | None = None,
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
        return self.reader.answer_loss(prepared, log_mask.to(self.reader.device)).mean()

    def options(self) -> dict[str, Any]:
        """The method name and hyperparameters."""
        return {"method": self.method, "k": self.k, "kappa": self.kappa, "tau": self.tau, "noise": self.noise}
