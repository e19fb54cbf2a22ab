"""What counts as the answer: one normalisation and one "the answer is in this text" rule.

Evaluation (exact match, token F1, indirectly relevant gold) and mining (gold from the answer) use the
same two functions, so a document that mining labels as holding the answer is never counted as
"indirectly relevant" by evaluation, and the reverse.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

__all__ = ["YES_NO", "answer_in_text", "normalize_answer"]

# Comparison questions are answered "yes" or "no"; those words occur in many texts without stating the
# answer, so they never mark a text as holding it.
YES_NO = frozenset({"yes", "no"})
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD/HotpotQA answer normalisation: lower case, no punctuation, articles or extra spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _split_words(text: str) -> str:
    # Punctuation as a word break: "Rockefeller's" holds "Rockefeller", "19th-century" holds "19th century".
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text.lower())
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def answer_in_text(answers: Sequence[str], text: str) -> bool:
    """Whether an answer occurs in ``text`` as whole words ("yes"/"no" never count).

    Both sides are compared twice, normalised as :func:`normalize_answer` does (so "US" is found in
    "U.S.") and with punctuation as a word break (so "Rockefeller" is found in "Rockefeller's").
    """
    haystacks = (f" {normalize_answer(text)} ", f" {_split_words(text)} ")
    for answer in answers:
        for needle, haystack in zip((normalize_answer(answer), _split_words(answer)), haystacks, strict=True):
            if needle and needle not in YES_NO and f" {needle} " in haystack:
                return True
    return False
