"""Which format a row is in, told from its keys and the shapes of their values.

Detection never changes the meaning of a valid QA log: a QA log's own key (``candidates``)
win over a stray column that an official format also uses (a QA log's ``context`` string is not
HotpotQA's list of paragraphs). A row that fits two formats is an error that asks for ``--format``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from gumbel_rag.data.formats.qalog import Where, fail

__all__ = ["FORMATS", "Format", "format_of_row"]

Format = Literal["qalog", "hotpotqa", "musique", "fid"]
FORMATS: tuple[Format, ...] = ("qalog", "hotpotqa", "musique", "fid")
_NAMES: dict[Format, str] = {
    "qalog": "a QA log",
    "hotpotqa": "HotpotQA",
    "musique": "MuSiQue",
    "fid": "FiD/DPR",
}


def _value(row: dict[str, Any], key: str, encoded: bool) -> Any:
    value = row.get(key)
    if encoded and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else None


def _hotpotqa_marks(row: dict[str, Any], encoded: bool) -> list[str]:
    marks = []
    if row.get("supporting_facts") is not None:
        marks.append("'supporting_facts'")
    context = _value(row, "context", encoded)
    pair = _first(context)
    # Official: [[title, [sentences...]], ...]; Hugging Face: {"title": [...], "sentences": [...]}.
    if (
        isinstance(pair, list | tuple)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and isinstance(pair[1], list | str)
    ) or (isinstance(context, dict) and {"title", "sentences"} <= set(context)):
        marks.append("'context' of [title, sentences] pairs")
    return marks


def _musique_marks(row: dict[str, Any], encoded: bool) -> list[str]:
    paragraph = _first(_value(row, "paragraphs", encoded))
    if isinstance(paragraph, dict) and "paragraph_text" in paragraph:
        return ["'paragraphs' with 'paragraph_text'"]
    return []


def _fid_marks(row: dict[str, Any], encoded: bool) -> list[str]:
    return ["'ctxs'"] if isinstance(_value(row, "ctxs", encoded), list) else []


def _qalog_marks(row: dict[str, Any], encoded: bool) -> list[str]:
    # Only 'candidates': 'gold' alone means nothing without them, and FiD rows may carry one too.
    return ["'candidates'"] if row.get("candidates") is not None else []


_MARKS = {
    "qalog": _qalog_marks,
    "hotpotqa": _hotpotqa_marks,
    "musique": _musique_marks,
    "fid": _fid_marks,
}


def format_of_row(row: dict[str, Any], where: Where, encoded: bool = False) -> Format:
    """The format a row is in; a QA log unless an official format's own keys say otherwise.

    Raises DataError (reason "ambiguous format") when the row carries the marks of two formats.
    """
    fits: dict[Format, list[str]] = {}
    for name, marks_of in _MARKS.items():
        marks = marks_of(row, encoded)
        if marks:
            fits[name] = marks  # type: ignore[index]
    if len(fits) > 1:
        named = " and ".join(f"{_NAMES[f]} ({', '.join(m)})" for f, m in fits.items())
        options = " or ".join(f"--format {f}" for f in fits)
        msg = f"the rows fit more than one format: {named}; say which with {options} (format= in Python)"
        raise fail(where, None, msg, "ambiguous format")
    return next(iter(fits), "qalog")
