"""training/gradient_signal.py: the gold advantage of one G-Rerank gradient, on real tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gumbel_rag.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    return load_script(ROOT / "training" / "gradient_signal.py")


def test_gold_advantage_compares_gold_with_the_real_others_only() -> None:
    advantage = _recipe().gold_advantage
    # Candidate 3 is padding (valid = 3): its large value must not count.
    assert advantage([1.0, -1.0, 0.0, 100.0], [0], 3) == pytest.approx(1.5, rel=1e-9)
    assert advantage([1.0, -1.0, 0.0], [1], 3) == pytest.approx(-1.5, rel=1e-9)


def test_summary_shares_and_signal_to_noise() -> None:
    summary = _recipe().summarize([[1.0, 3.0], [-1.0, 0.5]])
    assert summary["right_direction"] == 0.75 and summary["expected_right"] == 0.5
    # |2| / sd(1, 3) = 2 / 1.414..., |-0.25| / sd(-1, 0.5) = 0.25 / 1.0607...
    assert summary["snr"] == pytest.approx((2 / 2**0.5 + 0.25 / 1.5 * 2**0.5) / 2, rel=1e-9)


def test_runs_on_a_qa_log_with_tiny_models(tiny_bi_encoder_dir, tiny_reader_dir, tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    rows = [
        {"question": f"Where is works {i}?", "answer": f"town {i}", "gold": [i % 4],
         "candidates": [f"Works {j} is in town {j}." for j in range(4)] + ["Bananas.", "Apples."]}
        for i in range(3)
    ]  # fmt: skip
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "signal.json"
    result = _recipe().main(["--data", str(log), "--reader", str(tiny_reader_dir), "--reranker",
                             str(tiny_bi_encoder_dir), "--kappa", "0.25", "4", "--draws", "3", "--k", "2",
                             "--json", str(out)])  # fmt: skip
    (per_kappa,) = result.values()
    assert set(per_kappa) == {"0.25", "4.0"}
    for summary in per_kappa.values():
        assert summary["questions"] == 3 and 0 <= summary["right_direction"] <= 1 and summary["snr"] >= 0
    assert json.loads(out.read_text()) == result


def test_one_draw_is_refused_with_the_option_named(capsys) -> None:
    with pytest.raises(SystemExit):
        _recipe().parse_args(["--data", "x.jsonl", "--draws", "1"])
    assert "--draws must be at least 2" in capsys.readouterr().err
