"""Size bounds of a reader's inputs: tokens per document, question and answer; characters tokenized.

Every size that scales a reader's memory is bounded. Documents are cut to ``max_document_tokens`` (by
design: that is the layout's slot width) and questions to ``max_question_tokens`` (counted, with one
warning per reader); an answer over ``max_answer_tokens`` is not trained on (``Reader.skip_reason`` tells
the trainer, ``prepare`` refuses it). Only a bounded prefix of any text is tokenized, so a 10M-character
document costs what a short one does.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_ANSWER_TOKENS",
    "DEFAULT_MAX_DOCUMENT_TOKENS",
    "DEFAULT_MAX_QUESTION_TOKENS",
    "TruncationCounts",
    "bounded_text",
    "check_token_bound",
    "truncate_text",
]

DEFAULT_MAX_DOCUMENT_TOKENS = 128
# A question of 256 tokens is ~190 words, several times any QA benchmark's longest; an answer of 128
# tokens is a long paragraph. Beyond them the question+answer pass (with grad) grows without need.
DEFAULT_MAX_QUESTION_TOKENS = 256
DEFAULT_MAX_ANSWER_TOKENS = 128

# First guess of characters per token when cutting text before tokenizing (English BPE is ~4.5); the
# cut grows fourfold (at most _GROWTH_STEPS times) while it yields too few tokens.
_CHARS_PER_TOKEN = 8
_GROWTH_STEPS = 3
# Tokens past the bound that the cut text must still yield: a cut can only change the tokens of the
# word it falls in, and that word lies beyond the bound.
_MARGIN_TOKENS = 8
_WHITESPACE = re.compile(r"\s")
# A cut never splits a word shorter than this (word-piece turns a word over 100 characters into [UNK]).
_LONGEST_WORD = 4096


def check_token_bound(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= minimum; otherwise raise ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cut_at_whitespace(text: str, limit: int) -> str:
    """About text[:limit], cut at whitespace so that no word is split (a word is hard-cut if it is huge)."""
    back = max(text.rfind(c, limit // 2, limit) for c in " \n\t")
    if back >= 0:
        return text[:back]
    ahead = _WHITESPACE.search(text, limit, limit + _LONGEST_WORD)
    return text[: ahead.start()] if ahead else text[:limit]


def bounded_text(tokenizer: Any, text: str, max_tokens: int) -> str:
    """A prefix of ``text`` whose tokenization starts with the same ``max_tokens`` tokens as the whole.

    Short texts come back unchanged without tokenizing. A long one is cut at about
    ``8 * (max_tokens + 8)`` characters (at a word boundary), and the cut grows fourfold while it yields
    fewer than ``max_tokens + 8`` tokens, at most three times: no more than ``512 * (max_tokens + 8)``
    characters are ever tokenized. Only a text with more characters than that per token (a huge run of
    blanks a tokenizer drops, one enormous word) is read less far than the whole.
    """
    limit = _CHARS_PER_TOKEN * (max_tokens + _MARGIN_TOKENS)
    for attempt in range(_GROWTH_STEPS + 1):
        if len(text) <= limit:
            return text
        piece = _cut_at_whitespace(text, limit)
        if attempt == _GROWTH_STEPS or _count_tokens(tokenizer, piece) >= max_tokens + _MARGIN_TOKENS:
            return piece
        limit *= 4
    raise AssertionError("unreachable")


def truncate_text(tokenizer: Any, text: str, max_tokens: int) -> tuple[str, bool]:
    """(text cut after its first ``max_tokens`` tokens, whether it was cut); tokenizes a bounded prefix."""
    piece = bounded_text(tokenizer, text, max_tokens)
    if len(piece.encode("utf-8")) < max_tokens:  # a token covers at least one byte (one more: a prefix)
        return text, False
    encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids = encoded["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    if tokenizer.is_fast:
        return piece[: encoded["offset_mapping"][max_tokens - 1][1]], True
    return tokenizer.decode(ids[:max_tokens]), True


class TruncationCounts:
    """Thread-safe counts of what a reader cut, with one warning per kind the first time."""

    def __init__(self, owner: str) -> None:
        """Empty counts; ``owner`` names the reader in the warning."""
        self.owner = owner
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, kind: str, detail: str, warn: bool = True) -> None:
        """Count one cut of ``kind``; the first one of a kind is logged as a warning (unless warn=False)."""
        with self._lock:
            self._counts[kind] += 1
            first = self._counts[kind] == 1
        if first and warn:
            logger.warning(
                "%s: %s (further cuts are counted, not logged: reader.truncations)", self.owner, detail
            )

    def as_dict(self) -> dict[str, int]:
        """Counts so far, by kind."""
        with self._lock:
            return dict(self._counts)
