"""training/interpolation_sweep.py on a tiny compare.py output: rebuilt splits, the choice, resume, models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gumbel_rag.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def _sweep():
    return load_script(ROOT / "training" / "interpolation_sweep.py")


def test_choice_prefers_the_smaller_weight_on_a_tie_and_interpolation_is_linear() -> None:
    sweep = _sweep()
    assert sweep.choose({0.0: 0.5, 0.5: 0.6, 1.0: 0.6}) == 0.5
    assert sweep.choose({0.0: 0.7, 1.0: 0.6}) == 0.0
    start, trained = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, -2.0]), "extra": torch.ones(1)}
    mixed = sweep.interpolated(start, trained, 0.25)
    assert set(mixed) == {"w"}
    torch.testing.assert_close(mixed["w"], torch.tensor([1.5, 1.0]), rtol=1e-6, atol=0)


def test_sweep_scores_every_weight_chooses_on_validation_saves_models_and_resumes(
    shared_data, tiny_bi_encoder_dir, tiny_reader_dir, tmp_path
) -> None:
    common = [
        "--data-dir", str(shared_data / "hotpotqa"), "--no-retrieved", "--train-limit", "24",
        "--dev-limit", "6", "--max-document-tokens", "16", "--reranker", str(tiny_bi_encoder_dir),
        "--reader", str(tiny_reader_dir), "--device", "cpu",
    ]  # fmt: skip
    runs = tmp_path / "runs"
    load_script(ROOT / "training" / "compare.py").main(
        [*common, "--output", str(runs), "--methods", "gumbel,supervised", "--seeds", "0", "--no-answers",
         "--max-steps", "2", "--batch-size", "2", "--report", str(tmp_path / "r.md"),
         "--figure", str(tmp_path / "r.png")]
    )  # fmt: skip
    out = tmp_path / "sweep"
    sweep_args = [*common, "--runs", str(runs), "--output", str(out), "--alphas", "0.5,1"]
    chosen = _sweep().main(sweep_args)

    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    # The start (weight 0) is always scored, next to the weights asked for.
    assert sorted((r["name"], r["alpha"]) for r in rows) == [
        (name, a) for name in ("gumbel-seed0", "supervised-seed0") for a in (0.0, 0.5, 1.0)
    ]
    untrained = json.loads((runs / "runs.jsonl").read_text().splitlines()[0])["metrics"]
    for r in rows:
        if r["alpha"] == 0.0:
            assert r["dev"]["recall@5"] == pytest.approx(untrained["recall@5"], rel=1e-6)
    for run in chosen[1:]:
        scores = {r["alpha"]: r["validation_score"] for r in rows if r["name"] == run["name"]}
        assert run["alpha"] == _sweep().choose(scores)
        assert (out / run["name"] / "model.safetensors").is_file()
    assert [r["name"] for r in chosen] == ["untrained", "gumbel-seed0", "supervised-seed0"]
    saved = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["name"] for r in saved] == [r["name"] for r in chosen]

    # The saved model is the chosen weight's: it ranks dev as that row says.
    from gumbel_rag import GumbelReranker
    from gumbel_rag.data import load_examples
    from gumbel_rag.evaluation import evaluate_reranker

    dev = load_examples(shared_data / "hotpotqa" / "dev_distractor_100.json")[0][:6]
    model = GumbelReranker.from_pretrained(str(out / "gumbel-seed0"), device="cpu")
    assert evaluate_reranker(model, dev)["mrr"] == pytest.approx(chosen[1]["metrics"]["mrr"], rel=1e-5)

    # The output is a compare.py output for the bootstrap: every chosen model loads and is scored.
    results = load_script(ROOT / "training" / "significance.py").main(
        ["--output", str(out), "--data-dir", str(shared_data / "hotpotqa"), "--dev-limit", "6",
         "--reranker", str(tiny_bi_encoder_dir), "--device", "cpu", "--resamples", "50"]
    )  # fmt: skip
    assert set(results) == {"untrained", "supervised"} and "recall@5" in results["supervised"]

    # A second call scores nothing new.
    _sweep().main(sweep_args)
    assert len((out / "sweep.jsonl").read_text().splitlines()) == len(rows)

    # A split that cannot be the trainer's is refused, naming the run.
    log = runs / "gumbel-seed0" / "logs" / "metrics.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for line in lines:
        if line.get("split") == "validation" and line["step"] == 0:
            line["score"] += 0.5
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(SystemExit, match="gumbel-seed0: the rebuilt validation split"):
        _sweep().main([*common, "--runs", str(runs), "--output", str(tmp_path / "again")])


def test_sweep_rebuilds_the_held_out_distractor_rows_of_a_validation_distractor_run(
    shared_data, tiny_bi_encoder_dir, tiny_reader_dir, tmp_path
) -> None:
    common = [
        "--data-dir", str(shared_data / "hotpotqa"), "--no-retrieved", "--train-limit", "24",
        "--dev-limit", "6", "--max-document-tokens", "16", "--reranker", str(tiny_bi_encoder_dir),
        "--reader", str(tiny_reader_dir), "--device", "cpu",
    ]  # fmt: skip
    runs = tmp_path / "runs"
    load_script(ROOT / "training" / "compare.py").main(
        [*common, "--output", str(runs), "--methods", "gumbel", "--seeds", "1", "--no-answers",
         "--max-steps", "2", "--batch-size", "2", "--validation-distractor", "6",
         "--report", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png")]
    )  # fmt: skip
    chosen = _sweep().main(
        [*common, "--runs", str(runs), "--output", str(tmp_path / "sweep"), "--alphas", "1"]
    )
    # The rebuilt rows gave the scores the run logged for its held-out rows (else the sweep stops).
    rows = [json.loads(line) for line in (tmp_path / "sweep" / "sweep.jsonl").read_text().splitlines()]
    assert {r["validation_rows"] for r in rows} == {6} and chosen[1]["guard"] == "distractor-6"
    log = runs / "gumbel-seed1" / "logs" / "metrics.jsonl"
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    start = next(r for r in logged if r.get("split") == "dev" and r["step"] == 0)
    expected = (start["ndcg@2"] + start["ndcg@5"]) / 2  # the guard's score of its dev set
    assert rows[0]["alpha"] == 0.0 and rows[0]["validation_score"] == pytest.approx(expected, rel=1e-6)
    # The check runs on these rows too: a logged score the rebuilt rows do not give stops the sweep.
    for line in logged:
        if line.get("split") == "dev" and line["step"] == 0:
            line["ndcg@5"] += 0.5
    log.write_text("".join(json.dumps(line) + "\n" for line in logged))
    with pytest.raises(SystemExit, match="gumbel-seed1: the rebuilt validation split"):
        _sweep().main([*common, "--runs", str(runs), "--output", str(tmp_path / "again")])


def test_bad_weights_and_an_empty_runs_folder_are_refused(tmp_path) -> None:
    with pytest.raises(SystemExit, match="--alphas"):
        _sweep().main(["--runs", str(tmp_path), "--output", str(tmp_path / "o"), "--alphas", "0.5,2"])
    with pytest.raises(SystemExit, match=r"no runs\.jsonl"):
        _sweep().main(["--runs", str(tmp_path), "--output", str(tmp_path / "o")])
