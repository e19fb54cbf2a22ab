"""What every reranker training loss declares, so the trainer feeds it only what it needs."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

__all__ = ["RerankLoss"]


class RerankLoss(nn.Module):
    """Base class of the training losses: ``forward(scores, candidate_mask, reader_batch, generator, gold)``.

    ``needs_reader`` False lets the trainer skip the reader's document pass (``reader_batch`` is then None);
    ``needs_gold`` True makes it pass ``gold``, a (B, N) bool tensor of gold candidates.
    """

    needs_reader: ClassVar[bool] = True
    needs_gold: ClassVar[bool] = False
