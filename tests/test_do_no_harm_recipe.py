"""training/do_no_harm.py on tiny models: every guard trains, resumes and is reported against untrained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gumbel_rag.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    return load_script(ROOT / "training" / "do_no_harm.py")


def test_every_guard_trains_resumes_and_is_reported(
    shared_data, tiny_bi_encoder_dir, tiny_reader_dir, tmp_path
):
    recipe = _recipe()
    report = tmp_path / "results.md"
    report.write_text("# R\n\nkept\n\n<!-- noharm:begin -->\nold\n<!-- noharm:end -->\n\nafter\n")
    args = ["--data-dir", str(shared_data / "hotpotqa"), "--output", str(tmp_path / "runs"),
            "--checks", "generated", "--guards", "none,anchor1,lora", "--limit", "12", "--max-steps", "1",
            "--max-document-tokens", "16", "--reranker", str(tiny_bi_encoder_dir),
            "--reader", str(tiny_reader_dir), "--report", str(report)]  # fmt: skip
    recipe.main(args)
    runs = [json.loads(line) for line in (tmp_path / "runs" / "runs.jsonl").read_text().splitlines()]
    names = [r["name"] for r in runs]
    assert names == ["generated/untrained"] + [
        f"generated/gumbel-{g}-seed0{w}" for g in ("none", "anchor1", "lora") for w in ("", "+wise0.5")
    ]
    assert all(len(r["per_question"]["ood"]["mrr"]) == 12 for r in runs)
    text = report.read_text()
    assert (
        text.startswith("# R\n\nkept\n\n<!-- noharm:begin -->\n#### Check `generated`") and "old" not in text
    )
    assert text.endswith("<!-- noharm:end -->\n\nafter\n") and "OOD-val MRR - untrained" in text
    # A rerun finds everything done and trains nothing.
    recipe.main(args)
    assert len((tmp_path / "runs" / "runs.jsonl").read_text().splitlines()) == len(runs)


def test_paired_difference_is_paired_and_skips_missing() -> None:
    recipe = _recipe()
    a = [1.0, 1.0, None, 0.5] * 10
    b = [0.0, 1.0, 1.0, 0.5] * 10
    d = recipe.paired_difference(a, b)
    assert d["difference"] == pytest.approx(1 / 3, rel=1e-9)
    assert 0 < d["ci_low"] < d["difference"] < d["ci_high"] and d["p_not_above"] == 0.0
    same = recipe.paired_difference(b, b)
    assert same["difference"] == 0 and same["p_not_above"] == 1.0 and np.isclose(same["ci_low"], 0)
