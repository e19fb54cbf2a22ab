"""Perplexity distillation: match the reranker to the reader's single-document answer likelihoods."""

from __future__ import annotations

import torch

from gumbel_rag.losses.distillation import (
    TeacherDistillationLoss,
    single_document_log_masks,
    teacher_answer_losses,
)
from gumbel_rag.readers.base import ReaderBatch

__all__ = ["PDistLoss"]


class PDistLoss(TeacherDistillationLoss):
    """Perplexity distillation from Atlas (Izacard et al., JMLR 2023, arXiv 2208.03299).

    Inputs: reranker scores ``w`` (B, N) with grad, the (B, N) bool candidate mask, the reader's batch.
    The teacher score of document i is the reader's mean answer log-likelihood given d_i alone,
    ``g_i = (1/|a|) sum_t log p_phi(a_t | a_<t, q, d_i)``, and

        L = KL( softmax(g / T') || softmax(w / T) ).

    The teacher is computed without grad (N answer passes over the cached document states).
    """

    method = "pdist"

    def teacher_scores(self, candidate_mask: torch.Tensor, reader_batch: ReaderBatch) -> torch.Tensor:
        """g_i: the answer log-likelihood with document i alone visible."""
        return -teacher_answer_losses(self.reader, reader_batch, single_document_log_masks(candidate_mask))
