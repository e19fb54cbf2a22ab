"""Leave-one-out perplexity distillation: a document matters as much as the answer suffers without it."""

from __future__ import annotations

import torch

from gumbel_rag.losses.base import RerankLoss
from gumbel_rag.losses.distillation import (
    document_log_probs,
    kl_to_teacher,
    leave_one_out_log_masks,
    teacher_answer_losses,
)
from gumbel_rag.readers.base import Reader, ReaderBatch

__all__ = ["LOOPLoss"]


class LOOPLoss(RerankLoss):
    """Leave-one-out perplexity distillation from Atlas (Izacard et al., JMLR 2023, arXiv 2208.03299).

    Inputs: reranker scores ``w`` (B, N) with grad, the (B, N) bool candidate mask, the reader's batch.
    The teacher score of document i is the reader's answer NLL when every document but d_i is visible,
    ``g_i = -(1/|a|) sum_t log p_phi(a_t | a_<t, q, D minus d_i)`` (high when removing d_i hurts), and

        L = KL( softmax(g / T') || softmax(w / T) ).

    The N leave-one-out answer passes run without grad over the cached document states.
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
        """Mean KL from the leave-one-out teacher to the reranker's distribution over the batch."""
        nll = teacher_answer_losses(self.reader, reader_batch, leave_one_out_log_masks(candidate_mask))
        teacher = nll.to(scores.device) / self.teacher_temperature
        student = document_log_probs(scores, candidate_mask, self.temperature)
        return kl_to_teacher(student, teacher, candidate_mask)

    def extra_repr(self) -> str:
        """Show the temperatures in ``print(loss)``."""
        return f"temperature={self.temperature}, teacher_temperature={self.teacher_temperature}"
