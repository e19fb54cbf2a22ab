"""The in-memory data model shared by every loader, the miner, the trainer and the CLI."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gumbel_rag.errors import GumbelRagError

__all__ = ["Candidate", "DataError", "LoadSummary", "QAExample"]


@dataclass
class Candidate:
    """One retrieved document: its text plus optional id, title and free-form metadata."""

    text: str
    id: str | None = None
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> str:
        """What the reranker and reader see: ``"{title}: {text}"`` when a title is set, else ``text``."""
        return f"{self.title}: {self.text}" if self.title else self.text


@dataclass
class QAExample:
    """A question, its acceptable answers, the candidate documents and (if known) the gold candidates."""

    question: str
    answers: list[str]
    candidates: list[Candidate] = field(default_factory=list)
    # Indices into `candidates`; None means "not labelled", [] means "labelled: none of them is gold".
    gold: list[int] | None = None
    id: str | None = None
    # "file:line" of the row this came from. Excluded from equality so that a written and re-read
    # example compares equal to the original.
    source: str | None = field(default=None, compare=False)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A bare string here would silently become a list of characters downstream.
        if isinstance(self.answers, str):
            raise TypeError("QAExample.answers must be a list of strings, not a string")
        if self.gold is not None:
            bad = [g for g in self.gold if not 0 <= g < len(self.candidates)]
            if bad:
                raise ValueError(
                    f"QAExample gold indices {bad} out of range for {len(self.candidates)} candidates"
                )

    @property
    def answer(self) -> str:
        """The first (canonical) answer."""
        return self.answers[0]

    @property
    def gold_candidates(self) -> list[Candidate]:
        """The gold candidates (empty when unlabelled)."""
        return [self.candidates[i] for i in self.gold or []]


class DataError(GumbelRagError, ValueError):
    """A bad input, located: ``str(err)`` reads ``"data.jsonl:17: field 'answer': expected ..."``."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        """``line`` is the 1-based line/row/record; ``reason`` is a short category for skip counts."""
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        self.reason = reason or message
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}:{self.line}"
        parts = [p for p in (where, f"field '{self.field}'" if self.field else "", self.message) if p]
        return ": ".join(parts)


@dataclass
class LoadSummary:
    """What a load or filter kept and what it skipped (reason -> count, and each skipped row).

    ``gold_sources`` counts the labelled rows by where their gold came from (the format's rule).
    """

    loaded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_rows: list[tuple[str, int, str]] = field(default_factory=list)
    gold_sources: dict[str, int] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        """Total number of skipped rows."""
        return sum(self.skipped.values())

    def skip(self, path: str, line: int, reason: str, message: str | None = None) -> None:
        """Record one skipped row under ``reason`` (``message`` defaults to the reason)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_rows.append((path, line, message or reason))

    def skip_error(self, err: DataError) -> None:
        """Record the row an error was raised for."""
        self.skip(err.path or "?", err.line or 0, err.reason, str(err))

    def merge(self, other: LoadSummary) -> LoadSummary:
        """A new summary adding both."""
        counts = Counter(self.skipped)
        counts.update(other.skipped)
        sources = Counter(self.gold_sources)
        sources.update(other.gold_sources)
        return LoadSummary(
            loaded=self.loaded + other.loaded,
            skipped=dict(counts),
            skipped_rows=[*self.skipped_rows, *other.skipped_rows],
            gold_sources=dict(sources),
        )

    def __str__(self) -> str:
        """One line that reads after a verb: ``"98 examples, 2 skipped (1 malformed JSON, 1 bad answer)"``."""
        text = f"{self.loaded} example{'' if self.loaded == 1 else 's'}"
        if not self.skipped:
            return text + ", 0 skipped"
        by_count = sorted(self.skipped.items(), key=lambda item: (-item[1], item[0]))
        return f"{text}, {self.n_skipped} skipped ({', '.join(f'{n} {reason}' for reason, n in by_count)})"
