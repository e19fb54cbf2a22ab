"""The synthetic bridge-question generator."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from gumbel_rag.data import generate_multihop, load_examples, write_qalog
from gumbel_rag.data.synthetic import _SUFFIXES, CHAINS

HOTPOT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hotpotqa"


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text))


def _gold_pair(ex):  # type: ignore[no-untyped-def]
    """(A, B): A mentions the question's entity, B holds the answer."""
    first, second = (ex.candidates[i] for i in ex.gold)
    return (first, second) if ex.metadata["entity"] in first.text else (second, first)


@pytest.fixture(scope="module")
def examples():  # type: ignore[no-untyped-def]
    return generate_multihop(300, seed=3)


def test_deterministic_per_seed() -> None:
    assert generate_multihop(20, seed=7) == generate_multihop(20, seed=7)
    assert generate_multihop(20, seed=7) != generate_multihop(20, seed=8)


def test_shape(examples) -> None:  # type: ignore[no-untyped-def]
    assert len(examples) == 300
    assert len({e.id for e in examples}) == 300
    for ex in examples:
        assert len(ex.candidates) == 8 and len(ex.gold) == 2 and ex.gold == sorted(ex.gold)
        assert len(ex.answers) == 1 and ex.question.endswith("?")
        assert len({c.id for c in ex.candidates}) == 8
    assert [len(e.candidates) for e in generate_multihop(5, n_candidates=3)] == [3] * 5
    assert [len(e.candidates) for e in generate_multihop(5, n_candidates=2)] == [2] * 5
    with pytest.raises(ValueError):
        generate_multihop(1, n_candidates=1)


def test_every_chain_is_used(examples) -> None:  # type: ignore[no-untyped-def]
    assert {e.metadata["chain"] for e in examples} == {f"{a}>{b}" for a, b, _ in CHAINS}


def test_bridge_structure(examples) -> None:  # type: ignore[no-untyped-def]
    for ex in examples:
        entity, bridge, answer = ex.metadata["entity"], ex.metadata["bridge"], ex.answers[0]
        a, b = _gold_pair(ex)
        assert entity in ex.question and bridge not in ex.question
        assert entity in a.text and bridge in a.text
        assert bridge in b.text and answer in b.content
        # The bridge document shares no word of the entity's name with the question's entity...
        assert not (_words(entity) - {"The"}) & _words(b.content)
        # ...and the first hop does not contain the answer: it is only "indirectly relevant".
        assert answer not in a.content
        # No distractor contains the answer, so the answer-bearing document is unique.
        others = [c for i, c in enumerate(ex.candidates) if i not in ex.gold]
        assert all(answer not in c.content for c in others)


def test_distractors_are_not_trivially_separable(examples) -> None:  # type: ignore[no-untyped-def]
    mentions_entity = 0
    shares_relation = 0
    for ex in examples:
        a, _ = _gold_pair(ex)
        others = [c for i, c in enumerate(ex.candidates) if i not in ex.gold]
        mentions_entity += any(ex.metadata["entity"] in c.text for c in others)
        shares_relation += any(c.metadata["relation"] == a.metadata["relation"] for c in others)
    assert mentions_entity == len(examples)  # a hard negative about the question's entity, always
    assert shares_relation > 0.6 * len(examples)


def test_names_are_unique_across_examples(examples) -> None:  # type: ignore[no-untyped-def]
    entities = [e.metadata["entity"] for e in examples] + [e.metadata["bridge"] for e in examples]
    assert len(set(entities)) == len(entities)


def test_fast_enough_for_the_main_job() -> None:
    start = time.perf_counter()
    generate_multihop(300, seed=11)
    assert time.perf_counter() - start < 1.0


def test_round_trips_as_a_qa_log(tmp_path: Path, examples) -> None:  # type: ignore[no-untyped-def]
    write_qalog(examples[:20], tmp_path / "synthetic.jsonl")
    assert load_examples(tmp_path / "synthetic.jsonl")[0] == examples[:20]


@pytest.mark.skipif(not HOTPOT_DIR.is_dir(), reason=f"shared HotpotQA samples not found at {HOTPOT_DIR}")
def test_entities_are_invented(examples) -> None:  # type: ignore[no-untyped-def]
    real = set()
    for p in sorted(HOTPOT_DIR.glob("*.json")):
        real |= _words(p.read_text(encoding="utf-8"))
    generic = {w for words in _SUFFIXES.values() for w in words} | {"The"}
    names = {e.metadata["entity"] for e in examples} | {e.metadata["bridge"] for e in examples}
    # A name counts as real only if all its invented words occur in HotpotQA's Wikipedia text.
    assert not [n for n in names if _words(n) - generic <= real]
