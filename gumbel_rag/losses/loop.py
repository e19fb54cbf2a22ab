"""Leave-one-out perplexity distillation: a document matters as much as the answer suffers without it."""

from __future__ import annotations

import torch

from gumbel_rag.losses.distillation import (
    TeacherDistillationLoss,
    leave_one_out_log_masks,
    teacher_answer_losses,
)
from gumbel_rag.readers.base import ReaderBatch

__all__ = ["LOOPLoss"]


class LOOPLoss(TeacherDistillationLoss):
    """Leave-one-out perplexity distillation from Atlas (Izacard et al., JMLR 2023, arXiv 2208.03299).

    Inputs: reranker scores ``w`` (B, N) with grad, the (B, N) bool candidate mask, the reader's batch.
    The teacher score of document i is the reader's answer NLL when every document but d_i is visible,
    ``g_i = -(1/|a|) sum_t log p_phi(a_t | a_<t, q, D minus d_i)`` (high when removing d_i hurts), and

        L = KL( softmax(g / T') || softmax(w / T) ).

    The N leave-one-out answer passes run without grad over the cached document states.
    """

    method = "loop"

    def teacher_scores(self, candidate_mask: torch.Tensor, reader_batch: ReaderBatch) -> torch.Tensor:
        """g_i: the answer NLL with every document but i visible."""
        return teacher_answer_losses(self.reader, reader_batch, leave_one_out_log_masks(candidate_mask))
