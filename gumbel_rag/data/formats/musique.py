"""MuSiQue in its official JSON Lines format."""

from __future__ import annotations

from typing import Any

from gumbel_rag.data.formats.qalog import Where, as_id, as_text, decode_json_cell, fail, type_name
from gumbel_rag.data.schema import Candidate, QAExample

__all__ = ["parse_musique_row"]


def _aliases(value: Any, where: Where) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        msg = f"expected a list of strings, got {type_name(value)}"
        raise fail(where, "answer_aliases", msg, "bad answer")
    return value


def _paragraph(value: Any, where: Where, field: str) -> tuple[Candidate, bool | None]:
    if not isinstance(value, dict):
        raise fail(where, field, f"expected an object, got {type_name(value)}", "bad paragraphs")
    if value.get("paragraph_text") is None:
        msg = "missing: every paragraph needs a paragraph_text"
        raise fail(where, f"{field}.paragraph_text", msg, "candidate without text")
    text = as_text(value["paragraph_text"], where, f"{field}.paragraph_text", "candidate text")
    title = value.get("title")
    if title is not None and not isinstance(title, str):
        raise fail(where, f"{field}.title", f"expected a string, got {type_name(title)}", "bad paragraphs")
    flag = value.get("is_supporting")
    if flag is not None and not isinstance(flag, bool):
        msg = f"expected true or false, got {type_name(flag)}"
        raise fail(where, f"{field}.is_supporting", msg, "bad gold")
    return Candidate(text=text, id=as_id(value.get("idx"), where, f"{field}.idx"), title=title), flag


def parse_musique_row(row: dict[str, Any], where: Where, encoded: bool = False) -> QAExample:
    """One MuSiQue question -> QAExample; answers = answer + aliases, gold from ``is_supporting``.

    Unanswerable rows (``answerable: false``) are kept, marked in metadata; their gold is [].
    """
    question = as_text(row.get("question"), where, "question", "question", empty_ok=False)
    answer = as_text(row.get("answer"), where, "answer", "answer", empty_ok=False)
    aliases = row.get("answer_aliases")
    paragraphs = row.get("paragraphs")
    if encoded:
        aliases = decode_json_cell(aliases, where, "answer_aliases")
        paragraphs = decode_json_cell(paragraphs, where, "paragraphs")
    answers = [answer, *(a for a in dict.fromkeys(_aliases(aliases, where)) if a != answer and a.strip())]
    if paragraphs is None:
        paragraphs = []
    if not isinstance(paragraphs, list):
        msg = f"expected a list of objects, got {type_name(paragraphs)}"
        raise fail(where, "paragraphs", msg, "bad paragraphs")
    parsed = [_paragraph(p, where, f"paragraphs[{i}]") for i, p in enumerate(paragraphs)]
    flags = [f for _, f in parsed]
    gold = None if all(f is None for f in flags) else [i for i, f in enumerate(flags) if f]
    metadata = {k: row[k] for k in ("answerable", "question_decomposition") if row.get(k) is not None}
    return QAExample(
        question=question,
        answers=answers,
        candidates=[c for c, _ in parsed],
        gold=gold,
        id=as_id(row.get("id"), where, "id"),
        source=f"{where[0]}:{where[1]}",
        metadata=metadata,
    )
