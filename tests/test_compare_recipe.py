"""training/compare.py end to end on tiny models: runs, resume, the report table and the chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gumbel_rag.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    return load_script(ROOT / "training" / "compare.py")


def test_compare_trains_each_method_resumes_and_reports(
    shared_data, tiny_bi_encoder_dir, tiny_reader_dir, tmp_path
) -> None:
    recipe = _recipe()
    report = tmp_path / "results.md"
    report.write_text(
        "# Results\n\nHand-written analysis stays.\n\n<!-- compare:begin -->\nold\n<!-- compare:end -->\n"
    )
    args = [
        "--data-dir", str(shared_data / "hotpotqa"), "--output", str(tmp_path / "runs"),
        "--methods", "gumbel,supervised", "--seeds", "0,1", "--no-retrieved",
        "--train-limit", "8", "--dev-limit", "4", "--answer-limit", "2", "--max-steps", "1",
        "--max-document-tokens", "16", "--batch-size", "2", "--reranker", str(tiny_bi_encoder_dir),
        "--reader", str(tiny_reader_dir), "--device", "cpu", "--report", str(report),
        "--figure", str(tmp_path / "results.png"),
    ]  # fmt: skip
    recipe.main(args)
    # Resuming with the ablations added (one seed) runs only what is missing.
    recipe.main([*args, "--ablations", "--seeds", "0"])
    rows = [json.loads(line) for line in (tmp_path / "runs" / "runs.jsonl").read_text().splitlines()]
    names = [r["name"] for r in rows]
    assert names[0] == "untrained" and len(names) == len(set(names)) == 1 + 2 * 2 + len(recipe.ABLATIONS)
    assert {r["method"] for r in rows[1:]} == {"gumbel", "supervised"}
    no_noise = next(r for r in rows if r["variant"] == "gumbel-no-noise")
    assert no_noise["settings"]["noise"] is False and no_noise["steps"] == 1
    assert all("answer_f1@5" in r["metrics"] and r["metrics"]["n"] == 4 for r in rows)
    assert {r["guard"] for r in rows[1:]} == {"default"}

    text = report.read_text()
    assert "Hand-written analysis stays." in text and "\nold\n" not in text
    assert (
        "| supervised | 2 |" in text
        and "| gumbel-k2 | 1 |" in text
        and "| untrained | 1 |" in text
        and " ± " in text
    )
    assert "| gumbel minus | recall@5 | indirect_recall@5 |" in text and "| supervised | " in text
    assert (tmp_path / "results.png").stat().st_size > 1000
    # Runs that stop early at different steps are reported as a range, not as the first run's count.
    assert " 1 optimizer steps each" in text
    assert recipe._spread([126, 42, 84]) == "42-126" and recipe._spread([5, 5]) == "5"

    # Another call finds every run done and trains nothing.
    recipe.main(args)
    assert len((tmp_path / "runs" / "runs.jsonl").read_text().splitlines()) == len(rows)


def test_time_budget_stops_before_a_run_that_would_not_fit_and_resumes(
    shared_data, tiny_bi_encoder_dir, tiny_reader_dir, tmp_path
) -> None:
    recipe = _recipe()
    assert not recipe.out_of_time(None, 1e9, [1e9])
    assert not recipe.out_of_time(1.0, 30.0, [29.0]) and recipe.out_of_time(1.0, 30.0, [31.0])
    args = [
        "--data-dir", str(shared_data / "hotpotqa"), "--output", str(tmp_path / "runs"),
        "--methods", "supervised", "--seeds", "0,1", "--no-retrieved", "--no-answers",
        "--train-limit", "8", "--dev-limit", "4", "--max-steps", "1", "--max-document-tokens", "16",
        "--batch-size", "2", "--reranker", str(tiny_bi_encoder_dir), "--reader", str(tiny_reader_dir),
        "--device", "cpu", "--report", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png"),
    ]  # fmt: skip
    (tmp_path / "r.md").write_text("<!-- compare:begin -->\n<!-- compare:end -->\n")
    # A budget of zero minutes starts no training run (the untrained row is always measured).
    recipe.main([*args, "--max-minutes", "0"])
    names = [json.loads(line)["name"] for line in (tmp_path / "runs" / "runs.jsonl").read_text().splitlines()]
    assert names == ["untrained"]
    recipe.main([*args, "--no-guard"])  # no budget: resumes with what is missing
    rows = [json.loads(line) for line in (tmp_path / "runs" / "runs.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["untrained", "supervised-seed0", "supervised-seed1"]
    assert [r["guard"] for r in rows[1:]] == ["none", "none"]


def test_an_ablation_name_in_methods_runs_only_that_ablation() -> None:
    recipe = _recipe()
    picked = recipe.variants(["pdist", "gumbel-tau0.5"], ablations=False)
    assert [(v.name, v.method, v.overrides) for v in picked] == [
        ("pdist", "pdist", {}),
        ("gumbel-tau0.5", "gumbel", {"tau": 0.5}),
    ]
    # --ablations adds the others once, without repeating one already named.
    names = [v.name for v in recipe.variants(["gumbel-kappa1"], ablations=True)]
    assert names[0] == "gumbel-kappa1" and sorted(names) == sorted(recipe.ABLATIONS)


def test_an_unknown_method_is_refused_before_anything_loads(tmp_path) -> None:
    recipe = _recipe()
    with pytest.raises(
        SystemExit, match=r"--methods: unknown 'gumbel-tau05'; choose from gumbel, .*gumbel-tau0.5"
    ):
        # The data dir does not exist: the check has to come before any file or model is read.
        recipe.main(["--data-dir", str(tmp_path / "missing"), "--methods", "pdist,gumbel-tau05"])


def test_contrasts_give_the_difference_and_welch_standard_error() -> None:
    recipe = _recipe()
    summary = [
        ("untrained", 1, {"recall@5": (0.80, 0.0)}),
        ("gumbel", 3, {"recall@5": (0.86, 0.03)}),
        ("emdr", 3, {"recall@5": (0.84, 0.04)}),
        ("pdist", 1, {"recall@5": (0.70, 0.0)}),
    ]
    rows = dict(recipe.contrasts(summary, keys=("recall@5",)))
    assert set(rows) == {"untrained", "emdr", "pdist"}
    diff, se = rows["emdr"]["recall@5"]
    assert abs(diff - 0.02) < 1e-12 and abs(se - (0.03**2 / 3 + 0.04**2 / 3) ** 0.5) < 1e-12
    # The untrained model is deterministic: only G-Rerank's seeds spread.
    assert abs(rows["untrained"]["recall@5"][1] - 0.03 / 3**0.5) < 1e-12
    assert rows["pdist"]["recall@5"][1] is None  # one seed: no spread to estimate from
    table = recipe.contrast_table(list(rows.items()), "gumbel")
    assert (
        "| emdr | +0.020 ± 0.029 (+0.7 SE) |" in table and "| pdist | +0.160 (one seed: no spread) |" in table
    )
    assert recipe.contrasts(summary, reference="missing") == []


def test_held_out_distractor_rows_are_seeded_disjoint_and_drawn_from_the_pool_only() -> None:
    recipe = _recipe()
    rows = [object() for _ in range(40)]
    pool, ids = rows[:20], {id(ex) for ex in rows[:20]}
    train, held = recipe.held_out_rows(rows, ids, 6, seed=0)
    assert len(held) == 6 and all(ex in pool for ex in held)
    assert len(train) == 34 and not {id(ex) for ex in train} & {id(ex) for ex in held}
    assert [rows.index(ex) for ex in train] == sorted(rows.index(ex) for ex in train)  # order kept
    assert recipe.held_out_rows(rows, ids, 6, seed=0)[1] == held  # seeded
    assert recipe.held_out_rows(rows, ids, 6, seed=1)[1] != held  # the seed draws another split
    with pytest.raises(SystemExit, match=r"--validation-distractor 20: choose 1 to 19 \(of 20 rows\)"):
        recipe.held_out_rows(rows, ids, 20, seed=0)


def test_validation_distractor_guards_every_run_with_the_held_out_rows(
    shared_data, tiny_bi_encoder_dir, tiny_reader_dir, tmp_path
) -> None:
    recipe = _recipe()
    args = [
        "--data-dir", str(shared_data / "hotpotqa"), "--output", str(tmp_path / "runs"),
        "--methods", "supervised", "--seeds", "0", "--no-retrieved", "--no-answers",
        "--train-limit", "16", "--dev-limit", "4", "--max-steps", "1", "--max-document-tokens", "16",
        "--batch-size", "2", "--reranker", str(tiny_bi_encoder_dir), "--reader", str(tiny_reader_dir),
        "--device", "cpu", "--report", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png"),
        "--validation-distractor", "5",
    ]  # fmt: skip
    (tmp_path / "r.md").write_text("<!-- compare:begin -->\n<!-- compare:end -->\n")
    with pytest.raises(SystemExit, match="--no-guard trains without a validation set"):
        recipe.main([*args, "--no-guard"])
    recipe.main(args)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "runs.jsonl").read_text().splitlines()]
    run = rows[1]
    assert run["guard"] == "distractor-5" and run["validation_rows"] == 5 and run["train_rows"] == 11


def test_a_run_killed_part_way_continues_from_its_checkpoint(
    shared_data, tiny_bi_encoder_dir, tiny_reader_dir, tmp_path
) -> None:
    """A kill after a checkpoint, simulated on real files (a kill cannot be timed inside one test): a
    finished run's directory without its saved model, later checkpoints and runs.jsonl row."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from gumbel_rag.checkpoints import SAVED_MODEL_FILES, checkpoint_step, list_checkpoints

    recipe = _recipe()
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = [
        "--data-dir", str(shared_data / "hotpotqa"), "--methods", "gumbel", "--seeds", "0",
        "--no-retrieved", "--no-answers", "--train-limit", "12", "--dev-limit", "4",
        "--max-document-tokens", "16", "--batch-size", "2", "--checkpoint-every", "2", "--no-guard",
        "--reranker", str(tiny_bi_encoder_dir), "--reader", str(tiny_reader_dir), "--device", "cpu",
        "--report", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png"),
    ]  # fmt: skip
    (tmp_path / "r.md").write_text("<!-- compare:begin -->\n<!-- compare:end -->\n")
    recipe.main([*args, "--output", str(full)])
    done = [json.loads(line) for line in (full / "runs.jsonl").read_text().splitlines()]
    steps = done[-1]["steps"]
    assert steps >= 4 and "resumed_from_step" not in done[-1]

    shutil.copytree(full, killed)
    run = killed / "gumbel-seed0"
    for name in SAVED_MODEL_FILES:
        (run / name).unlink(missing_ok=True)
    kept = next(p for p in list_checkpoints(run / "checkpoints") if checkpoint_step(p) < steps)
    for later in list_checkpoints(run / "checkpoints"):
        if later != kept:
            shutil.rmtree(later)
    (killed / "runs.jsonl").write_text((killed / "runs.jsonl").read_text().splitlines()[0] + "\n")
    assert recipe.resume_step(run) == checkpoint_step(kept)

    recipe.main([*args, "--output", str(killed)])
    row = json.loads((killed / "runs.jsonl").read_text().splitlines()[-1])
    assert row["resumed_from_step"] == checkpoint_step(kept) and row["steps"] == steps
    assert row["best_step"] == done[-1]["best_step"]
    a = load_file(str(full / "gumbel-seed0" / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    assert recipe.resume_step(run) is None  # finished: its saved model is there


def test_epochs_train_every_row_again_and_the_disk_cache_holds_the_reader_states(
    shared_data, tiny_bi_encoder_dir, tiny_reader_dir, tmp_path
) -> None:
    recipe = _recipe()
    cache = tmp_path / "states"
    args = [
        "--data-dir", str(shared_data / "hotpotqa"), "--methods", "gumbel", "--seeds", "0",
        "--no-retrieved", "--no-answers", "--train-limit", "8", "--dev-limit", "4",
        "--max-document-tokens", "16", "--batch-size", "2", "--no-guard",
        "--reranker", str(tiny_bi_encoder_dir), "--reader", str(tiny_reader_dir), "--device", "cpu",
        "--report", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png"),
    ]  # fmt: skip
    (tmp_path / "r.md").write_text("<!-- compare:begin -->\n<!-- compare:end -->\n")
    recipe.main([*args, "--output", str(tmp_path / "one")])
    recipe.main([*args, "--output", str(tmp_path / "two"), "--epochs", "2", "--reader-cache-dir", str(cache)])
    one, two = (
        json.loads((tmp_path / name / "runs.jsonl").read_text().splitlines()[-1]) for name in ("one", "two")
    )
    assert one["epochs"] == 1 and two["epochs"] == 2
    assert two["steps"] == 2 * one["steps"] > 0
    # --reader-cache-gb 0 with a directory: every document state goes to a safetensors file.
    assert any(cache.rglob("*.safetensors"))
