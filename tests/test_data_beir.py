"""BEIR folders (corpus.jsonl, queries.jsonl, qrels/*.tsv) in the loader, `gumbel-rag eval` and `mine`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gumbel_rag.cli import main
from gumbel_rag.data import DataError, filter_trainable, load_examples, load_many, mine_candidates
from gumbel_rag.data.formats.beir import GOLD_QRELS, apply_qrels, beir_paths, is_beir, load_beir

CORPUS = [
    {"_id": "d1", "title": "Zorblax", "text": "The Zorblax river flows through Quenby."},
    {"_id": "d2", "title": "Quenby", "text": "Quenby is a town of potters."},
    {"_id": "d3", "title": "", "text": "Bananas are yellow and sweet."},
    {"_id": "d4", "title": "Ostrel", "text": "The Ostrel is a river in Brannock."},
    {"_id": "d5", "title": "Brannock", "text": "Brannock is where Quessly Works has its seat."},
]
QUERIES = [
    {"_id": "q1", "text": "Which river flows through Quenby?", "metadata": {}},
    {"_id": "q2", "text": "Where is Quessly Works?", "metadata": {"answer": "Brannock"}},
    {"_id": "q9", "text": "What colour are bananas?", "metadata": {}},  # judged in dev only
]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    folder = tmp_path / "tinybeir"
    (folder / "qrels").mkdir(parents=True)
    _jsonl(folder / "corpus.jsonl", CORPUS)
    _jsonl(folder / "queries.jsonl", QUERIES)
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t0\nq2\td5\t2\n"
    )
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq9\td3\t1\n")
    return folder


def test_load_beir_reads_the_judged_queries_of_the_test_split(beir: Path) -> None:
    assert is_beir(beir) and is_beir(beir / "qrels" / "dev.tsv") and not is_beir(beir / "corpus.jsonl")
    data = load_beir(beir)
    assert data.qrels_file == beir / "qrels" / "test.tsv"
    assert [(e.id, e.question, e.answers) for e in data.examples] == [
        ("q1", "Which river flows through Quenby?", []),
        ("q2", "Where is Quessly Works?", ["Brannock"]),
    ]
    assert data.examples[0].metadata["qrels"] == {"d1": 1, "d3": 0}
    assert [(c.id, c.title) for c in data.corpus][:3] == [("d1", "Zorblax"), ("d2", "Quenby"), ("d3", None)]
    assert [e.id for e in load_beir(beir / "qrels" / "dev.tsv").examples] == ["q9"]


def test_gold_is_the_retrieved_relevant_documents(beir: Path) -> None:
    data = load_beir(beir)
    examples, summary = apply_qrels(mine_candidates(data.examples, data.corpus, "bm25", top_n=5))
    for ex in examples:
        relevant = {d for d, score in ex.metadata["qrels"].items() if score > 0}
        assert [ex.candidates[i].id for i in ex.gold or []] == [
            c.id for c in ex.candidates if c.id in relevant
        ]
    first = examples[0]
    assert [first.candidates[i].id for i in first.gold or []] == ["d1"]  # d3 is judged 0: not gold
    assert summary.gold_sources == {GOLD_QRELS: 2}


def test_bad_beir_folders_are_located(beir: Path) -> None:
    (beir / "qrels" / "test.tsv").unlink()
    (beir / "qrels" / "train.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(DataError, match=r"which split\? qrels/ holds dev\.tsv, train\.tsv and no test\.tsv"):
        beir_paths(beir)
    (beir / "qrels" / "train.tsv").write_text("q1\td1\t1\nq7\td2\t1\n")
    with pytest.raises(
        DataError, match=r"train\.tsv: 1 judged queries are not in queries\.jsonl \(first: 'q7'\)"
    ):
        load_beir(beir / "qrels" / "train.tsv")
    (beir / "qrels" / "train.tsv").write_text("q1\td1\tvery\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: field 'score': expected a number"):
        load_beir(beir / "qrels" / "train.tsv")


def test_eval_on_a_beir_folder(beir: Path, tiny_bi_encoder_dir: Path, capsys) -> None:
    args = ["eval", "--data", str(beir), "--reranker", str(tiny_bi_encoder_dir), "--top-n", "4", "--k", "1,2"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["retrieval"]["retriever"] == "bm25" and report["retrieval"]["top_n"] == 4
    assert report["retrieval"]["corpus_documents"] == 5 and report["retrieval"]["candidate_recall"] == 1.0
    assert report["gold_source"] == {GOLD_QRELS: 2} and report["n"] == 2
    assert 0.0 <= report["recall@1"] <= 1.0 and "mrr" in report
    assert main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"candidates: bm25 top-4 of 5 documents \(\S+test\.tsv; share of the relevant", out)
    assert "gold: qrels" in out


def test_mine_a_beir_folder_then_train_supervised(
    beir: Path, tiny_bi_encoder_dir: Path, tmp_path: Path, capsys
):
    mined = tmp_path / "mined.jsonl"
    assert main(["mine", "--data", str(beir), "--output", str(mined), "--top-n", "3"]) == 0
    examples, _ = load_examples(mined)  # answers [] is a valid row when it has gold
    assert [e.id for e in examples] == ["q1", "q2"] and examples[0].answers == []
    assert [examples[0].candidates[i].id for i in examples[0].gold or []] == ["d1"]
    kept, skipped = filter_trainable(examples, 2)
    assert [e.id for e in kept] == ["q2"] and skipped.skipped == {"no answer": 1}
    assert len(filter_trainable(examples, 2, need_answers=False)[0]) == 2
    out = tmp_path / "model"
    assert main(["train", "--data", str(mined), "--output", str(out), "--method", "supervised",
                 "--reranker", str(tiny_bi_encoder_dir), "--max-steps", "1", "--no-progress",
                 "--mixed-precision", "no"]) == 0  # fmt: skip
    assert "trainable with --method supervised: 2 examples" in capsys.readouterr().out
    assert (
        main(["mine", "--data", str(beir), "--corpus", str(beir / "corpus.jsonl"), "--output", str(mined)])
        == 2
    )
    assert "a BEIR folder brings its own corpus.jsonl" in capsys.readouterr().err


def test_train_on_a_beir_folder_says_to_mine_it_first(beir: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(DataError, match=r"a BEIR folder has queries, a corpus and qrels but no candidates"):
        load_many([beir])
    assert main(["train", "--data", str(beir), "--output", str(tmp_path / "m")]) == 2
    assert "gumbel-rag mine --data" in capsys.readouterr().err
    assert (
        main(["mine", "--data", str(beir), "--format", "qalog", "--output", str(tmp_path / "x.jsonl")]) == 2
    )
    assert "a BEIR folder has its own format" in capsys.readouterr().err
