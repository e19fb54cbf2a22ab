"""Official formats: HotpotQA (fixtures and the shared sample files) and MuSiQue (fixture)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from gumbel_rag.data import DataError, detect_format, load_examples, load_many, write_qalog

HOTPOT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hotpotqa"
needs_shared = pytest.mark.skipif(
    not HOTPOT_DIR.is_dir(), reason=f"shared HotpotQA samples not found at {HOTPOT_DIR}"
)


def _hotpot_row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "_id": "abc123",
        "question": "Which band did the singer of Zorp join?",
        "answer": "The Quux",
        "type": "bridge",
        "level": "medium",
        "supporting_facts": [["Zorp", 0], ["The Quux", 1], ["The Quux", 0]],
        "context": [
            ["Distractor", ["First sentence.", " Second one."]],
            ["The Quux", ["The Quux is a band.", " Its singer is Ann."]],
            ["Zorp", ["Zorp is sung by Ann.", " It is loud.", '"Quoted" end.']],
        ],
    }
    row.update(overrides)
    return row


def test_hotpotqa_fixture(tmp_path: Path) -> None:
    p = tmp_path / "hotpot.json"
    p.write_text(json.dumps([_hotpot_row()]))
    assert detect_format(p) == "hotpotqa"
    [ex], summary = load_examples(p)
    assert summary.loaded == 1
    assert ex.id == "abc123" and ex.answers == ["The Quux"]
    assert [c.title for c in ex.candidates] == ["Distractor", "The Quux", "Zorp"]
    assert [c.id for c in ex.candidates] == ["Distractor", "The Quux", "Zorp"]
    # Sentences carry their own leading space, so the paragraph reads as one text.
    assert ex.candidates[0].text == "First sentence. Second one."
    assert ex.candidates[2].text == 'Zorp is sung by Ann. It is loud."Quoted" end.'
    assert ex.candidates[1].content == "The Quux: The Quux is a band. Its singer is Ann."
    assert ex.gold == [1, 2]
    assert ex.metadata == {"type": "bridge", "level": "medium", "supporting_titles": ["Zorp", "The Quux"]}


def test_hotpotqa_gold_only_among_present_paragraphs(tmp_path: Path) -> None:
    rows = [
        _hotpot_row(context=[["Other", ["x"]], ["Zorp", ["y"]]]),  # one gold retrieved
        _hotpot_row(context=[["Other", ["x"]]]),  # none retrieved
        _hotpot_row(context=[]),  # nothing retrieved at all
        {k: v for k, v in _hotpot_row().items() if k != "supporting_facts"},  # unlabelled (test set)
    ]
    p = tmp_path / "retrieved.json"
    p.write_text(json.dumps(rows))
    examples, _ = load_examples(p)
    assert [e.gold for e in examples] == [[1], [], [], None]
    assert examples[2].candidates == []
    assert examples[0].metadata["supporting_titles"] == ["Zorp", "The Quux"]


def test_hotpotqa_hugging_face_layout_as_jsonl(tmp_path: Path) -> None:
    row = _hotpot_row(
        id="hf1",
        supporting_facts={"title": ["Zorp", "The Quux"], "sent_id": [0, 1]},
        context={"title": ["Zorp", "Other"], "sentences": [["Zorp is sung by Ann."], ["x"]]},
    )
    del row["_id"]
    p = tmp_path / "hf.jsonl"
    p.write_text(json.dumps(row) + "\n")
    assert detect_format(p) == "hotpotqa"
    [ex], _ = load_examples(p)
    assert ex.id == "hf1" and ex.gold == [0] and [c.title for c in ex.candidates] == ["Zorp", "Other"]


def test_hotpotqa_stripped_sentences_get_spaces(tmp_path: Path) -> None:
    p = tmp_path / "stripped.json"
    p.write_text(json.dumps([_hotpot_row(context=[["T", ["One.", "Two.", "", "Three."]]])]))
    assert load_examples(p)[0][0].candidates[0].text == "One. Two. Three."


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ({"context": [["T", ["s"]], ["only a title"]]}, "context[1]", "pair"),
        ({"context": [["T", ["s", 3]]]}, "context[0]", "list of strings"),
        ({"supporting_facts": "Zorp"}, "supporting_facts", "got string"),
        ({"answer": None}, "answer", "missing"),
    ],
)
def test_hotpotqa_bad_record_is_located(
    tmp_path: Path, override: dict[str, object], field: str, fragment: str
) -> None:
    p = tmp_path / "hotpot.json"
    p.write_text(json.dumps([_hotpot_row(), _hotpot_row(**override)]))
    with pytest.raises(DataError) as info:
        load_examples(p)
    assert (info.value.line, info.value.field) == (2, field)
    assert fragment in str(info.value)
    examples, summary = load_examples(p, skip_invalid=True)
    assert len(examples) == 1 and summary.n_skipped == 1


@needs_shared
@pytest.mark.parametrize(
    ("name", "count"),
    [("dev_distractor_100.json", 100), ("train_distractor_100.json", 100), ("retrieved_500.json", 500)],
)
def test_shared_hotpotqa_files(name: str, count: int) -> None:
    path = HOTPOT_DIR / name
    assert detect_format(path) == "hotpotqa"
    examples, summary = load_examples(path)
    assert len(examples) == summary.loaded == count and summary.skipped == {}
    raw = json.loads(path.read_text(encoding="utf-8"))
    for ex, row in zip(examples, raw, strict=True):
        assert ex.id == row["_id"] and len(ex.candidates) == len(row["context"])
        titles = {t for t, _ in row["supporting_facts"]}
        # Gold is exactly the present paragraphs whose title is a supporting fact.
        assert ex.gold == [i for i, (t, _) in enumerate(row["context"]) if t in titles]
        for c, (_, sentences) in zip(ex.candidates, row["context"], strict=True):
            # Official sentences carry their separating whitespace: the paragraph is restored exactly.
            assert c.text == "".join(sentences).strip()
    gold_counts = Counter(len(ex.gold or []) for ex in examples)
    if "distractor" in name:
        assert gold_counts == {2: count}
    else:
        assert gold_counts[2] == 151  # the README's "gold paragraphs present in only 151"
        assert min(len(ex.candidates) for ex in examples) == 0


@needs_shared
def test_shared_files_load_together() -> None:
    examples, summary = load_many(sorted(HOTPOT_DIR.glob("*.json")))
    assert summary.loaded == len(examples) == 700


# ----------------------------------------------------------------------------- MuSiQue

_MUSIQUE = [
    {
        "id": "2hop__1_2",
        "question": "Who founded the label that released Blue Tide?",
        "answer": "Ann Lee",
        "answer_aliases": ["Ann B. Lee", "Ann Lee", "A. Lee"],
        "answerable": True,
        "question_decomposition": [{"id": 1, "question": "label of Blue Tide", "answer": "Zed Records"}],
        "paragraphs": [
            {"idx": 0, "title": "Noise", "paragraph_text": "Unrelated.", "is_supporting": False},
            {
                "idx": 1,
                "title": "Blue Tide",
                "paragraph_text": "Blue Tide was released by Zed Records.",
                "is_supporting": True,
            },
            {
                "idx": 2,
                "title": "Zed Records",
                "paragraph_text": "Zed Records was founded by Ann Lee.",
                "is_supporting": True,
            },
        ],
    },
    {
        "id": "2hop__3_4",
        "question": "Unanswerable one?",
        "answer": "Bob",
        "answer_aliases": [],
        "answerable": False,
        "paragraphs": [{"idx": 0, "title": "X", "paragraph_text": "x.", "is_supporting": False}],
    },
]


def test_musique_fixture(tmp_path: Path) -> None:
    p = tmp_path / "musique_ans_dev.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in _MUSIQUE))
    assert detect_format(p) == "musique"
    (a, b), summary = load_examples(p)
    assert summary.loaded == 2
    assert a.id == "2hop__1_2"
    assert a.answers == ["Ann Lee", "Ann B. Lee", "A. Lee"]
    assert a.gold == [1, 2]
    assert [c.id for c in a.candidates] == ["0", "1", "2"]
    assert a.candidates[2].content == "Zed Records: Zed Records was founded by Ann Lee."
    assert a.metadata["answerable"] is True and "question_decomposition" in a.metadata
    assert b.gold == [] and b.metadata["answerable"] is False


def test_musique_json_extension_and_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "musique.json"  # JSONL content under a .json name, as some copies ship
    p.write_text("".join(json.dumps(r) + "\n" for r in _MUSIQUE))
    examples, _ = load_examples(p)
    out = tmp_path / "as_log.parquet"
    write_qalog(examples, out)
    assert load_examples(out)[0] == examples


def test_musique_bad_paragraph_is_located(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(_MUSIQUE[0]))
    del bad["paragraphs"][1]["paragraph_text"]
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(_MUSIQUE[1]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"m\.jsonl:2: field 'paragraphs\[1\]\.paragraph_text': missing"):
        load_examples(p)
    with pytest.raises(DataError, match="field 'paragraphs'"):
        p.write_text(json.dumps({**_MUSIQUE[1], "paragraphs": "x"}) + "\n")
        load_examples(p, format="musique")


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(_MUSIQUE[0]) + "\n")
    # Read as a plain QA log, the MuSiQue-only columns become metadata.
    [ex], _ = load_examples(p, format="qalog")
    assert ex.candidates == [] and "paragraphs" in ex.metadata
