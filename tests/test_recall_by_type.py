"""training/recall_by_type.py: per-type recall and each type's share of the gap, on a real file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gumbel_rag.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    return load_script(ROOT / "training" / "recall_by_type.py")


def test_shares_of_the_gap_add_up_and_follow_the_misses() -> None:
    table = _recipe().by_type(["a", "b", "a", "b"], {2: [1.0, 0.5, 0.0, 0.5]})
    assert table["a"] == {"n": 2, "recall@2": 0.5, "share_of_gap@2": pytest.approx(0.5, rel=1e-9)}
    assert table["b"]["recall@2"] == 0.5 and table["a"]["share_of_gap@2"] + table["b"]["share_of_gap@2"] == 1
    assert _recipe().by_type(["a"], {5: [1.0]})["a"]["share_of_gap@5"] == 0.0  # nothing missing


def test_runs_on_a_hotpotqa_file(shared_data, tiny_bi_encoder_dir, tmp_path) -> None:
    out = tmp_path / "types.json"
    args = ["--data", str(shared_data / "hotpotqa" / "dev_distractor_100.json"), "--json", str(out),
            "--reranker", str(tiny_bi_encoder_dir)]  # fmt: skip
    results = _recipe().main(args)
    (table,) = results.values()
    assert set(table) == {"bridge", "comparison"} and table["bridge"]["n"] + table["comparison"]["n"] == 100
    assert sum(t["share_of_gap@2"] for t in table.values()) == pytest.approx(1.0, rel=1e-9)
    assert json.loads(out.read_text()) == results
