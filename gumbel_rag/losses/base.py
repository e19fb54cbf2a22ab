"""What every reranker training loss is: it owns its reader and hyperparameters and prepares its batches.

The trainer knows nothing of any method. For each micro-batch it asks the loss to ``prepare`` what the loss
needs besides the reranker's scores (the reader's no-grad document states, gold labels, a frozen reference
model's scores ...), scores the candidates with the reranker, and calls the loss on both. Before training
it asks ``skip_reason`` which rows the loss can learn nothing from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from gumbel_rag.data import QAExample
    from gumbel_rag.readers.base import Reader, ReaderBatch

__all__ = ["ReaderLoss", "RerankLoss", "candidate_texts", "check_finite", "check_positive"]


def check_finite(name: str, value: float) -> float:
    """``value`` as a float, or ValueError naming ``name`` when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, or ValueError naming ``name`` unless it is finite and > 0."""
    if check_finite(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def candidate_texts(examples: Sequence[QAExample]) -> list[list[str]]:
    """Each example's candidate texts, as the reranker and the reader see them."""
    return [[c.content for c in ex.candidates] for ex in examples]


class RerankLoss(nn.Module):
    """Base of the training losses.

    ``prepare(examples)`` runs without grad and returns what ``forward`` needs besides the scores;
    ``forward(scores, candidate_mask, prepared, generator)`` gives a scalar with grad into ``scores``
    (``scores`` and ``candidate_mask`` are (B, N), padded over the candidate axis). ``skip_reason(example)``
    says why a row cannot teach this loss (None when it can); ``options()`` lists the hyperparameters, for
    logs and for telling one run from another.
    """

    method: ClassVar[str] = ""

    @property
    def reader(self) -> Reader | None:
        """The frozen reader this loss reads answers with (None when it uses none)."""
        return None

    def prepare(self, examples: Sequence[QAExample]) -> Any:
        """What ``forward`` needs for these examples besides the scores (computed without grad)."""
        raise NotImplementedError

    @classmethod
    def row_problem(cls, example: QAExample, **options: Any) -> str | None:
        """Why ``example`` can teach this kind of loss (with ``options``) nothing; None when it can.

        A class method, so that rows can be checked before any model is loaded; ranking needs two
        candidates.
        """
        n = len(example.candidates)
        if n == 0:
            return "no candidates"
        return "one candidate: nothing to rank" if n == 1 else None

    def skip_reason(self, example: QAExample) -> str | None:
        """Why ``example`` can teach this loss nothing (None when it can), by :meth:`row_problem`."""
        return self.row_problem(example, **{k: v for k, v in self.options().items() if k != "method"})

    def options(self) -> dict[str, Any]:
        """The method name and hyperparameters (JSON values)."""
        return {"method": self.method}

    def extra_repr(self) -> str:
        """Show the hyperparameters in ``print(loss)``."""
        return ", ".join(f"{k}={v}" for k, v in self.options().items() if k != "method")


class ReaderLoss(RerankLoss):
    """A loss computed through a frozen reader, which it holds (not as a submodule: never saved or synced)."""

    def __init__(self, reader: Reader) -> None:
        """Keep the frozen reader."""
        super().__init__()
        if reader is None:
            raise ValueError(f"the {self.method} loss needs a reader")
        self.__dict__["_reader"] = reader

    @property
    def reader(self) -> Reader:
        """The frozen reader."""
        return self.__dict__["_reader"]

    @classmethod
    def row_problem(cls, example: QAExample, **options: Any) -> str | None:
        """Rows without an answer give the reader nothing to score; otherwise as :class:`RerankLoss`."""
        if not example.answers:
            return "no answer"
        return super().row_problem(example, **options)

    def skip_reason(self, example: QAExample) -> str | None:
        """As :meth:`row_problem`, then the reader's own bounds (an answer over ``max_answer_tokens``)."""
        reason = super().skip_reason(example)
        if reason is None:
            reason = self.reader.skip_reason(example.question, example.answers[0])
        return reason

    @torch.no_grad()
    def prepare(self, examples: Sequence[QAExample]) -> ReaderBatch:
        """The reader's document states and answer tokens (first answer of each example)."""
        questions = [ex.question for ex in examples]
        return self.reader.prepare(questions, candidate_texts(examples), [ex.answers[0] for ex in examples])
