"""Perplexity distillation: match the reranker to the reader's single-document answer likelihoods."""

from __future__ import annotations

import torch

from gumbel_rag.losses.base import RerankLoss
from gumbel_rag.losses.distillation import (
    document_log_probs,
    kl_to_teacher,
    single_document_log_masks,
    teacher_answer_losses,
)
from gumbel_rag.readers.base import Reader, ReaderBatch

__all__ = ["PDistLoss"]


class PDistLoss(RerankLoss):
    """Perplexity distillation from Atlas (Izacard et al., JMLR 2023, arXiv 2208.03299).

    Inputs: reranker scores ``w`` (B, N) with grad, the (B, N) bool candidate mask, the reader's batch.
    The teacher score of document i is the reader's mean answer log-likelihood given d_i alone,
    ``g_i = (1/|a|) sum_t log p_phi(a_t | a_<t, q, d_i)``, and

        L = KL( softmax(g / T') || softmax(w / T) ).

    The teacher is computed without grad (N answer passes over the cached document states).
    """

    def __init__(self, reader: Reader, temperature: float = 1.0, teacher_temperature: float = 1.0) -> None:
        """Keep the frozen reader (not a submodule), the student temperature T and the teacher's T'."""
        super().__init__()
        if teacher_temperature <= 0:
            raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature}")
        self.__dict__["reader"] = reader
        self.temperature, self.teacher_temperature = temperature, teacher_temperature

    def forward(
        self,
        scores: torch.Tensor,
        candidate_mask: torch.Tensor,
        reader_batch: ReaderBatch,
        generator: torch.Generator | None = None,
        gold: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean KL from the teacher distribution to the reranker's distribution over the batch."""
        nll = teacher_answer_losses(self.reader, reader_batch, single_document_log_masks(candidate_mask))
        teacher = -nll.to(scores.device) / self.teacher_temperature
        student = document_log_probs(scores, candidate_mask, self.temperature)
        return kl_to_teacher(student, teacher, candidate_mask)

    def extra_repr(self) -> str:
        """Show the temperatures in ``print(loss)``."""
        return f"temperature={self.temperature}, teacher_temperature={self.teacher_temperature}"
