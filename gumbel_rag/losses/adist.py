"""Attention distillation: match the reranker to how much the reader attends to each document."""

from __future__ import annotations

import torch

from gumbel_rag.losses.distillation import TeacherDistillationLoss
from gumbel_rag.readers.base import ReaderBatch

__all__ = ["ADistLoss"]


class ADistLoss(TeacherDistillationLoss):
    """Attention distillation (Izacard & Grave, ICLR 2021, arXiv 2012.04584; Atlas, arXiv 2208.03299).

    Inputs: reranker scores ``w`` (B, N) with grad, the (B, N) bool candidate mask, the reader's batch.
    The teacher score ``g_i`` is the attention mass the reader's answer-predicting tokens put on document
    i's tokens with every document visible, averaged over layers, heads and answer tokens. The teacher
    distribution is ``softmax(log g / T')`` (``T' = 1``: the attention masses renormalised over the
    candidates), and

        L = KL( softmax(log g / T') || softmax(w / T) ).
    """

    method = "adist"

    def teacher_scores(self, candidate_mask: torch.Tensor, reader_batch: ReaderBatch) -> torch.Tensor:
        """log g_i: the log of the attention mass on document i."""
        return self.reader.document_attention(reader_batch).float().clamp(min=1e-12).log()
