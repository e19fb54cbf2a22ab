"""Attention distillation: match the reranker to how much the reader attends to each document."""

from __future__ import annotations

import torch

from gumbel_rag.losses.base import RerankLoss
from gumbel_rag.losses.distillation import document_log_probs, kl_to_teacher
from gumbel_rag.readers.base import Reader, ReaderBatch

__all__ = ["ADistLoss"]


class ADistLoss(RerankLoss):
    """Attention distillation (Izacard & Grave, ICLR 2021, arXiv 2012.04584; Atlas, arXiv 2208.03299).

    Inputs: reranker scores ``w`` (B, N) with grad, the (B, N) bool candidate mask, the reader's batch.
    The teacher score ``g_i`` is the attention mass the reader's answer-predicting tokens put on document
    i's tokens with every document visible, averaged over layers, heads and answer tokens. The teacher
    distribution is ``softmax(log g / T')`` (``T' = 1``: the attention masses renormalised over the
    candidates), and

        L = KL( softmax(log g / T') || softmax(w / T) ).
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
        """Mean KL from the attention teacher to the reranker's distribution over the batch."""
        mass = self.reader.document_attention(reader_batch).float().to(scores.device)
        teacher = mass.clamp(min=1e-12).log() / self.teacher_temperature
        student = document_log_probs(scores, candidate_mask, self.temperature)
        return kl_to_teacher(student, teacher, candidate_mask)

    def extra_repr(self) -> str:
        """Show the temperatures in ``print(loss)``."""
        return f"temperature={self.temperature}, teacher_temperature={self.teacher_temperature}"
