"""HotpotQA in its official JSON format (also the Hugging Face ``hotpot_qa`` layout, exported as rows)."""

from __future__ import annotations

from typing import Any

from gumbel_rag.data.formats.qalog import Where, as_id, as_text, decode_json_cell, fail, type_name
from gumbel_rag.data.schema import Candidate, QAExample

__all__ = ["paragraph_text", "parse_hotpotqa_row", "sentences_spaced"]


def paragraph_text(sentences: list[str], spaced: bool = True) -> str:
    """A paragraph from its sentences: concatenated when they carry their own whitespace, else spaced.

    Official HotpotQA sentences keep their leading whitespace (" The ..."), so concatenation restores
    the Wikipedia paragraph exactly, including the ~1% of boundaries inside quotes that have none
    ('... "Allo!' + '".'). Copies whose sentences were stripped (``spaced=False``) get single spaces.
    """
    parts = [s for s in sentences if s.strip()]
    return ("" if spaced else " ").join(parts).strip()


def sentences_spaced(paragraphs: list[list[str]]) -> bool:
    """Whether any sentence after a paragraph's first starts with whitespace (the official convention)."""
    return any(s[:1].isspace() for sentences in paragraphs for s in sentences[1:])


def _pairs(value: Any, where: Where, field: str, keys: tuple[str, str]) -> list[tuple[Any, Any]]:
    """``[[a, b], ...]`` (official) or ``{keys[0]: [a...], keys[1]: [b...]}`` (Hugging Face) as pairs."""
    if isinstance(value, dict):
        firsts, seconds = value.get(keys[0]), value.get(keys[1])
        if isinstance(firsts, list) and isinstance(seconds, list) and len(firsts) == len(seconds):
            return list(zip(firsts, seconds, strict=True))
        msg = f"expected {{'{keys[0]}': [...], '{keys[1]}': [...]}} of equal length"
        raise fail(where, field, msg, f"bad {field}")
    if not isinstance(value, list):
        raise fail(where, field, f"expected a list of pairs, got {type_name(value)}", f"bad {field}")
    pairs = []
    for i, item in enumerate(value):
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise fail(where, f"{field}[{i}]", f"expected a [{keys[0]}, {keys[1]}] pair", f"bad {field}")
        pairs.append((item[0], item[1]))
    return pairs


def _paragraphs(value: Any, where: Where) -> list[Candidate]:
    checked: list[tuple[str, list[str]]] = []
    for i, (title, sentences) in enumerate(_pairs(value, where, "context", ("title", "sentences"))):
        if not isinstance(title, str):
            msg = f"title: expected a string, got {type_name(title)}"
            raise fail(where, f"context[{i}]", msg, "bad context")
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            msg = "sentences: expected a list of strings"
            raise fail(where, f"context[{i}]", msg, "bad context")
        checked.append((title, sentences))
    # Decided per question, not per paragraph: a two-sentence paragraph alone cannot tell.
    spaced = sentences_spaced([s for _, s in checked])
    return [Candidate(text=paragraph_text(s, spaced), id=t, title=t) for t, s in checked]


def _supporting_titles(value: Any, where: Where) -> list[str]:
    titles: list[str] = []
    for i, (title, _sentence) in enumerate(_pairs(value, where, "supporting_facts", ("title", "sent_id"))):
        if not isinstance(title, str):
            msg = f"title: expected a string, got {type_name(title)}"
            raise fail(where, f"supporting_facts[{i}]", msg, "bad supporting_facts")
        if title not in titles:
            titles.append(title)
    return titles


def parse_hotpotqa_row(row: dict[str, Any], where: Where, encoded: bool = False) -> QAExample:
    """One HotpotQA question -> QAExample: a candidate per context paragraph (id and title = its title).

    Gold = the paragraphs present whose title is in ``supporting_facts`` ([] if none is present, as in
    retrieved contexts); None only when the row has no ``supporting_facts`` at all (the test set).
    """
    question = as_text(row.get("question"), where, "question", "question", empty_ok=False)
    answer = as_text(row.get("answer"), where, "answer", "answer", empty_ok=False)
    context = row.get("context")
    if encoded:
        context = decode_json_cell(context, where, "context")
    candidates = _paragraphs([] if context is None else context, where)
    facts = row.get("supporting_facts")
    if encoded:
        facts = decode_json_cell(facts, where, "supporting_facts")
    metadata: dict[str, Any] = {k: row[k] for k in ("type", "level") if row.get(k) is not None}
    gold = None
    if facts is not None:
        titles = _supporting_titles(facts, where)
        # Kept so that recall can be measured against all gold titles, including those not retrieved.
        metadata["supporting_titles"] = titles
        gold = [i for i, c in enumerate(candidates) if c.title in titles]
    return QAExample(
        question=question,
        answers=[answer],
        candidates=candidates,
        gold=gold,
        id=as_id(row.get("_id", row.get("id")), where, "_id"),
        source=f"{where[0]}:{where[1]}",
        metadata=metadata,
    )
