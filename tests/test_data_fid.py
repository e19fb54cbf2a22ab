"""FiD / DPR / Atlas retrieval output: detection, candidates, answers and the two gold rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gumbel_rag.data import DataError, detect_format, load_examples, write_qalog
from gumbel_rag.data.formats.fid import GOLD_EXPLICIT, GOLD_HAS_ANSWER


# What DPR's dense_retriever.py writes (a JSON array; scores as strings, has_answer per passage).
def _ctx(id: str, title: str, text: str, score: str, has_answer: bool) -> dict:
    return {"id": id, "title": title, "text": text, "score": score, "has_answer": has_answer}


DPR_ROWS = [
    {
        "question": "who wrote the glass orchard",
        "answers": ["Orvin Quell", "O. Quell"],
        "ctxs": [
            _ctx("wiki:17", "Glass Orchard", "A novel.", "81.2", False),
            _ctx("wiki:9", "Orvin Quell", "Quell wrote it.", "80.1", True),
            _ctx("wiki:3", "Orchards", "Fruit trees.", "79.5", False),
        ],
    },
    {
        "question": "where is quessly works",
        "answers": ["Brannock"],
        "ctxs": [_ctx("wiki:4", "Q", "In Ostrel.", "70", False)],
    },
]


def test_dpr_retriever_output_is_detected_and_read(tmp_path: Path) -> None:
    path = tmp_path / "nq-dev.json"
    path.write_text(json.dumps(DPR_ROWS, indent=1))
    assert detect_format(path) == "fid"
    (first, second), summary = load_examples(path)
    assert first.question == "who wrote the glass orchard" and first.answers == ["Orvin Quell", "O. Quell"]
    assert [c.id for c in first.candidates] == ["wiki:17", "wiki:9", "wiki:3"]  # the retriever's order
    assert first.candidates[1].title == "Orvin Quell" and first.candidates[1].text == "Quell wrote it."
    assert first.candidates[1].metadata == {"score": "80.1", "has_answer": True}
    assert first.gold == [1] and second.gold == []  # DPR's convention: the has_answer passages
    assert summary.gold_sources == {GOLD_HAS_ANSWER: 2}


def test_fid_jsonl_with_target_and_no_labels(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    ctxs = [{"title": "T", "text": "passage one"}, {"title": "U", "text": "passage two"}]
    row = {"id": "0", "question": "q?", "target": "Ostrel", "answers": ["the Ostrel", "Ostrel"], "ctxs": ctxs}
    path.write_text(json.dumps(row) + "\n")
    [example], summary = load_examples(path)
    assert example.answers == ["Ostrel", "the Ostrel"]  # FiD's training target first
    assert example.gold is None and summary.gold_sources == {}
    assert [c.content for c in example.candidates] == ["T: passage one", "U: passage two"]


def test_explicit_gold_wins_over_has_answer(tmp_path: Path) -> None:
    path = tmp_path / "labelled.jsonl"
    by_id = {**DPR_ROWS[0], "gold": ["wiki:3"]}
    by_flag = {**DPR_ROWS[0], "ctxs": [{**c, "gold": c["id"] == "wiki:17"} for c in DPR_ROWS[0]["ctxs"]]}
    path.write_text(json.dumps(by_id) + "\n" + json.dumps(by_flag) + "\n")
    examples, summary = load_examples(path)
    assert [e.gold for e in examples] == [[2], [0]]
    assert summary.gold_sources == {GOLD_EXPLICIT: 2}


def test_format_fid_forces_it_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "both.jsonl"
    path.write_text(json.dumps({**DPR_ROWS[0], "candidates": ["not used"]}) + "\n")
    with pytest.raises(DataError, match="--format qalog or --format fid"):
        load_examples(path)
    examples, _ = load_examples(path, "fid")
    assert len(examples[0].candidates) == 3
    write_qalog(examples, tmp_path / "out.jsonl")
    assert load_examples(tmp_path / "out.jsonl")[0] == examples


@pytest.mark.parametrize(
    ("ctx", "field"),
    [({"title": "no text"}, "ctxs[1].text"), ({"text": "t", "has_answer": "yes"}, "ctxs[1].has_answer")],
)
def test_bad_ctx_is_located(tmp_path: Path, ctx: dict, field: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answers": ["a"], "ctxs": [{"text": "fine"}, ctx]}) + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl:1: field '{re.escape(field)}'"):
        load_examples(path)
    path.write_text(json.dumps({"question": "q", "ctxs": []}) + "\n")
    with pytest.raises(DataError, match=r"field 'answers': missing \(give 'answers', 'answer' or 'target'\)"):
        load_examples(path)


def test_eval_train_and_mine_read_fid_without_format(tiny_bi_encoder_dir, tmp_path: Path, capsys) -> None:
    from gumbel_rag.cli import main

    path = tmp_path / "nq-dev.json"
    path.write_text(json.dumps(DPR_ROWS))
    assert main(["eval", "--data", str(path), "--reranker", str(tiny_bi_encoder_dir), "--k", "1"]) == 0
    out = capsys.readouterr().out
    # Only the first question has a has_answer passage; eval says which rule gave the gold.
    assert "gold: has_answer passages (DPR convention) (2 rows)" in out and re.search(r"\bn\s+1\b", out)
    assert main(["eval", "--data", str(path), "--reranker", str(tiny_bi_encoder_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gold_source"] == {GOLD_HAS_ANSWER: 2}
    out_dir = tmp_path / "model"
    assert main(["train", "--data", str(path), "--output", str(out_dir), "--method", "supervised",
                 "--reranker", str(tiny_bi_encoder_dir), "--max-steps", "1", "--no-progress",
                 "--mixed-precision", "no"]) == 0  # fmt: skip
    assert "trainable with --method supervised: 1 example, 1 skipped" in capsys.readouterr().out
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("unused\n")
    mined = tmp_path / "mined.jsonl"
    assert main(["mine", "--data", str(path), "--corpus", str(corpus), "--output", str(mined)]) == 0
    assert load_examples(mined)[0] == load_examples(path)[0]  # rows with candidates pass through
