"""Shared pieces of the distillation baselines: the reranker's distribution and the KL to a teacher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gumbel_rag.defaults import DEFAULT_TEACHER_TEMPERATURE, DEFAULT_TEMPERATURE
from gumbel_rag.losses.base import ReaderLoss, check_positive

if TYPE_CHECKING:
    from gumbel_rag.readers.base import Reader, ReaderBatch

__all__ = [
    "TeacherDistillationLoss",
    "document_log_probs",
    "kl_to_teacher",
    "leave_one_out_log_masks",
    "single_document_log_masks",
    "teacher_answer_losses",
]

NEG_INF = float("-inf")


def document_log_probs(
    scores: torch.Tensor, candidate_mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """log p_theta(d_i | q) = log_softmax(w / T) over the real candidates; -inf on padding."""
    check_positive("temperature", temperature)
    # A row without candidates would be all -inf, whose log_softmax is NaN in value and in gradient.
    empty = ~candidate_mask.any(dim=-1, keepdim=True)
    logits = (scores.float() / temperature).masked_fill(~candidate_mask & ~empty, NEG_INF)
    return torch.log_softmax(logits, dim=-1).masked_fill(empty, NEG_INF)


def kl_to_teacher(
    student_log_probs: torch.Tensor, teacher_logits: torch.Tensor, candidate_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher_logits) || p_student); padded candidates carry no mass.

    Rows with fewer than two candidates give exactly 0: there is nothing to rank.
    """
    empty = ~candidate_mask.any(dim=-1, keepdim=True)
    teacher_logits = teacher_logits.float().masked_fill(~candidate_mask & ~empty, NEG_INF)
    teacher = torch.log_softmax(teacher_logits, dim=-1)
    safe_student = student_log_probs.masked_fill(~candidate_mask, 0.0)
    safe_teacher = teacher.masked_fill(~candidate_mask, 0.0)
    kl = (safe_teacher.exp() * (safe_teacher - safe_student)).masked_fill(~candidate_mask, 0.0).sum(-1)
    return kl.mean()


def single_document_log_masks(candidate_mask: torch.Tensor) -> list[torch.Tensor]:
    """For each candidate slot i, the (B, N) log mask that shows document i alone (0 on i, -inf elsewhere)."""
    n = candidate_mask.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=candidate_mask.device)
    return [torch.where(eye[i].expand_as(candidate_mask), 0.0, NEG_INF) for i in range(n)]


def leave_one_out_log_masks(candidate_mask: torch.Tensor) -> list[torch.Tensor]:
    """For each candidate slot i, the (B, N) log mask that hides document i only."""
    n = candidate_mask.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=candidate_mask.device)
    return [torch.where(eye[i].expand_as(candidate_mask), NEG_INF, 0.0) for i in range(n)]


@torch.no_grad()
def teacher_answer_losses(reader: Reader, batch: ReaderBatch, log_masks: list[torch.Tensor]) -> torch.Tensor:
    """(B, N) reader answer NLL under each of the N log masks (one no-grad answer pass per mask)."""
    if not log_masks:
        return torch.zeros(batch.candidate_mask.shape, device=batch.candidate_mask.device)
    losses = [reader.answer_loss(batch, m.to(reader.device)) for m in log_masks]
    return torch.stack(losses, dim=1).float().to(batch.candidate_mask.device)


class TeacherDistillationLoss(ReaderLoss):
    """KL( softmax(g / T') || softmax(w / T) ) from a per-document teacher score g to the reranker.

    Subclasses define the teacher (``teacher_scores``: (B, N), higher = more useful, computed without
    grad); PDist, LOOP and ADist differ only there.
    """

    def __init__(
        self,
        reader: Reader,
        temperature: float = DEFAULT_TEMPERATURE,
        teacher_temperature: float = DEFAULT_TEACHER_TEMPERATURE,
    ) -> None:
        """Keep the frozen reader (not a submodule), the student temperature T and the teacher's T'."""
        super().__init__(reader)
        self.temperature = check_positive("temperature", temperature)
        self.teacher_temperature = check_positive("teacher_temperature", teacher_temperature)

    def teacher_scores(self, candidate_mask: torch.Tensor, reader_batch: ReaderBatch) -> torch.Tensor:
        """(B, N) teacher score g of every candidate."""
        raise NotImplementedError

    def forward(
        self,
        scores: torch.Tensor,
        candidate_mask: torch.Tensor,
        prepared: ReaderBatch,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean KL from the teacher distribution to the reranker's distribution over the batch."""
        with torch.no_grad():
            teacher = self.teacher_scores(candidate_mask, prepared).float().to(scores.device)
        student = document_log_probs(scores, candidate_mask, self.temperature)
        return kl_to_teacher(student, teacher / self.teacher_temperature, candidate_mask)

    def options(self) -> dict[str, Any]:
        """The method name and the two temperatures."""
        return {
            "method": self.method,
            "temperature": self.temperature,
            "teacher_temperature": self.teacher_temperature,
        }
