"""training/significance.py: the paired bootstrap, and the script on real saved (tiny) models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gumbel_rag.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script(ROOT / "training" / "significance.py")


def test_bootstrap_finds_a_real_lead_and_not_a_tie() -> None:
    sig = _script()
    rng = np.random.default_rng(1)
    other = rng.uniform(0, 0.8, size=(3, 60))
    ahead = sig.paired_bootstrap(other + 0.2, other, resamples=2000)
    assert ahead["difference"] == pytest.approx(0.2) and ahead["p_not_ahead"] == 0.0
    assert 0 < ahead["ci_low"] <= 0.2 <= ahead["ci_high"]
    # Three seeds of noise around the same level: the interval spans zero.
    tie = sig.paired_bootstrap(
        rng.uniform(0, 1, size=(3, 60)), rng.uniform(0, 1, size=(3, 60)), resamples=2000
    )
    assert tie["ci_low"] < 0 < tie["ci_high"] and 0.02 < tie["p_not_ahead"] < 0.98


def test_bootstrap_leaves_out_questions_without_the_metric() -> None:
    sig = _script()
    ref = np.array([[1.0, np.nan, 0.0]])
    other = np.array([[0.0, 1.0, np.nan]])
    result = sig.paired_bootstrap(ref, other, resamples=100)
    assert result["questions"] == 1 and result["difference"] == 1.0
    with pytest.raises(ValueError, match="no question has this metric"):
        sig.paired_bootstrap(np.array([[np.nan]]), np.array([[1.0]]))


def test_script_scores_saved_models_and_names_a_missing_one(
    shared_data, tiny_bi_encoder_dir, tmp_path, monkeypatch
) -> None:
    sig = _script()
    monkeypatch.syspath_prepend(str(ROOT / "training"))  # as `python training/significance.py` has it
    out = tmp_path / "runs"
    rows = [{"name": "untrained", "variant": "untrained"}]
    for name in ("gumbel-seed0", "gumbel-seed1", "emdr-seed0"):
        shutil.copytree(tiny_bi_encoder_dir, out / name)
        rows.append({"name": name, "variant": name.rsplit("-", 1)[0]})
    (out / "runs.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    args = [
        "--output", str(out), "--data-dir", str(shared_data / "hotpotqa"), "--dev-limit", "8",
        "--reranker", str(tiny_bi_encoder_dir), "--resamples", "200", "--device", "cpu",
        "--json", str(tmp_path / "sig.json"),
    ]  # fmt: skip
    results = sig.main(args)
    # The same weights everywhere: no difference, and the untrained default is compared too.
    assert set(results) == {"untrained", "emdr"}
    assert all(r["difference"] == 0.0 for by_metric in results.values() for r in by_metric.values())
    saved = json.loads((tmp_path / "sig.json").read_text())
    assert saved["reference"] == "gumbel" and saved["results"]["emdr"]["recall@5"]["seeds"] == [2, 1]
    # The per-question scores are kept beside runs.jsonl: the test runs again without the models.
    cached = [json.loads(line) for line in (out / "per_question.jsonl").read_text().splitlines()]
    assert [c["name"] for c in cached] == ["gumbel-seed0", "gumbel-seed1", "untrained", "emdr-seed0"]
    assert all(len(c["recall@5"]) == 8 for c in cached)
    for name in ("gumbel-seed0", "gumbel-seed1", "emdr-seed0"):
        shutil.rmtree(out / name)
    assert sig.main(args) == results
    # A run trained again (a later row of its name) does not reuse the old run's scores.
    with (out / "runs.jsonl").open("a") as fh:
        fh.write(json.dumps({"name": "emdr-seed0", "variant": "emdr", "steps": 2}) + "\n")
    with pytest.raises(SystemExit, match="emdr-seed0: no saved model and no scores of this run"):
        sig.main(args)
    # Nor does another set of dev questions.
    with pytest.raises(SystemExit, match="gumbel-seed0: no saved model"):
        sig.main([*args, "--dev-limit", "6", "--against", "untrained"])
    with pytest.raises(SystemExit, match="--against: pdist not in"):
        sig.main([*args, "--against", "pdist"])
