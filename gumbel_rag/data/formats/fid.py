"""FiD / DPR / Atlas retrieval output: ``{question, answers | answer | target, ctxs: [{id, title, text}]}``.

The format the paper's own data uses (DPR's retriever writes it, FiD and Atlas read it), as a JSON
array or JSON Lines. Each ``ctxs`` entry becomes a candidate, in the retriever's order; ``score``,
``has_answer`` and any other key stay in the candidate's metadata.

Gold, in this order: explicit labels when the row has any (a row-level ``gold`` of ctx indices or
ids, or ``"gold": true`` on ctxs); else DPR's convention, the ctxs with ``has_answer: true``; else
unlabelled (None).
"""

from __future__ import annotations

from typing import Any

from gumbel_rag.data.formats.qalog import (
    Where,
    answer_list,
    as_id,
    as_metadata,
    as_text,
    decode_json_cell,
    fail,
    is_index,
    parse_candidate,
    resolve_gold,
    type_name,
)
from gumbel_rag.data.schema import QAExample

__all__ = ["GOLD_EXPLICIT", "GOLD_HAS_ANSWER", "fid_gold_source", "parse_fid_row"]

GOLD_EXPLICIT = "explicit gold labels"
GOLD_HAS_ANSWER = "has_answer passages (DPR convention)"
_ROW_KEYS = {"question", "answers", "answer", "target", "ctxs", "gold", "id", "metadata"}


def _ctxs(row: dict[str, Any], where: Where, encoded: bool) -> list[Any]:
    ctxs = row.get("ctxs")
    if encoded:
        ctxs = decode_json_cell(ctxs, where, "ctxs")
    if ctxs is None:
        return []
    if not isinstance(ctxs, list):
        raise fail(where, "ctxs", f"expected a list of objects, got {type_name(ctxs)}", "bad candidates")
    return ctxs


def _answers(row: dict[str, Any], where: Where, encoded: bool) -> list[str]:
    """``target`` (FiD's training answer) first, then ``answer``, then ``answers``, without repeats."""
    answers: list[str] = []
    for key in ("target", "answer", "answers"):
        value = row.get(key)
        if encoded and key == "answers":
            value = (
                decode_json_cell(value, where, key) if isinstance(value, str) and value[:1] == "[" else value
            )
        if value is not None:
            answers.extend(a for a in answer_list(value, where, key) if a not in answers)
    if not answers:
        raise fail(where, "answers", "missing (give 'answers', 'answer' or 'target')", "missing answer")
    return answers


def _has_answer(ctxs: list[Any], where: Where) -> list[bool | None]:
    flags: list[bool | None] = []
    for i, ctx in enumerate(ctxs):
        flag = ctx.get("has_answer") if isinstance(ctx, dict) else None
        if flag is not None and not isinstance(flag, bool):
            msg = f"expected true or false, got {type_name(flag)}"
            raise fail(where, f"ctxs[{i}].has_answer", msg, "bad gold")
        flags.append(flag)
    return flags


def fid_gold_source(row: dict[str, Any]) -> str:
    """Where a labelled row's gold came from: explicit labels or DPR's ``has_answer``."""
    ctxs = row.get("ctxs")
    flagged = isinstance(ctxs, list) and any(isinstance(c, dict) and c.get("gold") is not None for c in ctxs)
    return GOLD_EXPLICIT if row.get("gold") is not None or flagged else GOLD_HAS_ANSWER


def parse_fid_row(row: dict[str, Any], where: Where, encoded: bool = False) -> QAExample:
    """One FiD/DPR row -> QAExample: a candidate per ctx, gold explicit or from ``has_answer``."""
    question = as_text(row.get("question"), where, "question", "question", empty_ok=False)
    answers = _answers(row, where, encoded)
    ctxs = _ctxs(row, where, encoded)
    parsed = [parse_candidate(c, where, f"ctxs[{i}]", encoded) for i, c in enumerate(ctxs)]
    candidates = [c for c, _ in parsed]
    flags = [f for _, f in parsed]
    has_answer = _has_answer(ctxs, where)
    if row.get("gold") is not None or any(f is not None for f in flags):
        gold = resolve_gold(row.get("gold"), flags, candidates, where, encoded)
    elif any(f is not None for f in has_answer):
        gold = resolve_gold(None, [bool(f) for f in has_answer], candidates, where, encoded)
    else:
        gold = None
    extras = {k: v for k, v in row.items() if k not in _ROW_KEYS and v is not None and not is_index(k)}
    return QAExample(
        question=question,
        answers=answers,
        candidates=candidates,
        gold=gold,
        id=as_id(row.get("id"), where, "id"),
        source=f"{where[0]}:{where[1]}",
        metadata={**extras, **as_metadata(row.get("metadata"), where, "metadata", encoded)},
    )
