"""Would choosing the WiSE-FT interpolation on the validation split beat the fixed half-way default?

The shipped guard saves ``theta_0 + 0.5 * (theta_best - theta_0)``: 0.5 was chosen on an out-of-domain
validation set (docs/results.md, "Do no harm"), and it halves what a kept step gained in domain. This
script takes a finished ``training/compare.py`` output, rebuilds each run's validation split (the same
seeded held-out training rows the trainer used, checked against the scores the run logged), and for every
interpolation weight scores the kept checkpoint's raw weights interpolated towards the start, on the
validation split (mean nDCG@2/@5, the guard's score) and on dev. The weight is chosen per run on the
validation split only (ties go to the smaller weight, the safer one); dev is reported, never chosen on.
On the full-scale HotpotQA runs it did not beat 0.5 (docs/results.md), so the default stays.

    python training/interpolation_sweep.py --runs runs/compare-ndcg --output runs/sweep-ndcg
    python training/significance.py --output runs/sweep-ndcg --against untrained,emdr,supervised

``--output`` gets ``sweep.jsonl`` (one row per run and weight, written as each finishes; a rerun skips
what is there), and, per run, the chosen model as a sentence-transformers directory plus a
``runs.jsonl`` in compare.py's format, so that ``training/significance.py`` can test it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # 0 (the start) is always scored: it checks the rebuilt split
TOLERANCE = 1e-6  # scores are means of rank metrics: equal up to float noise means a tie


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the sweep."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="a finished compare.py output (runs.jsonl)")
    p.add_argument("--output", type=Path, required=True, help="sweep.jsonl, chosen models and runs.jsonl")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/hotpotqa"), help="HotpotQA files")
    p.add_argument("--alphas", default=",".join(map(str, ALPHAS)), help="interpolation weights to score")
    # compare.py's data and model options: the sweep must see the rows and models the runs saw.
    p.add_argument("--train-limit", type=int, default=None, help="as compare.py")
    p.add_argument("--no-retrieved", action="store_true", help="as compare.py")
    p.add_argument("--dev-limit", type=int, default=None, help="as compare.py")
    p.add_argument("--reranker", default=None, help="the starting reranker compare.py used")
    p.add_argument("--reader", default=None, help="the reader compare.py used (for its row filter)")
    p.add_argument("--max-document-tokens", type=int, default=128, help="as compare.py")
    p.add_argument("--device", default=None, help="torch device")
    return p.parse_args(argv)


def choose(scores: dict[float, float]) -> float:
    """The weight with the best validation score; the smallest of those tied with it."""
    best = max(scores.values())
    return min(a for a, s in scores.items() if s >= best - TOLERANCE)


def interpolated(start: dict[str, Any], trained: dict[str, Any], alpha: float) -> dict[str, Any]:
    """``start + alpha * (trained - start)`` for the entries in ``start`` (the trainer's parameters)."""
    return {name: s + alpha * (trained[name] - s) for name, s in start.items()}


def run_config(run_dir: Path) -> dict[str, Any]:
    """The TrainConfig the run logged (validation fraction, seed, candidate cap, evaluation ks)."""
    return json.loads((run_dir / "logs" / "train_config.json").read_text(encoding="utf8"))


def validation_rows(
    run: dict[str, Any], config: dict[str, Any], rows: Sequence[Any], reader: Any, distractor: set[int]
) -> list[Any]:
    """The run's held-out training rows, rebuilt the way ``gumbel_rag.trainer.train`` drew them.

    A run of ``compare.py --validation-distractor N`` (guard ``distractor-N``) held out N rows of
    train_distractor_100.json before training; ``distractor`` holds those rows' object ids.
    """
    from compare import held_out_count, held_out_rows  # training/compare.py, beside this script

    n = held_out_count(run.get("guard", "default"))
    if n is not None:
        return held_out_rows(rows, distractor, n, config["seed"])[1]
    from gumbel_rag.losses import build_loss
    from gumbel_rag.trainer import cap_candidates, split_validation, trainable_examples

    loss = build_loss(run["method"], None if run["method"] == "supervised" else reader, **run["settings"])
    capped, _ = cap_candidates(rows, config["max_candidates"])
    kept, _ = trainable_examples(loss, capped)
    _, held = split_validation(kept, config["validation_fraction"], seed=config["seed"])
    return held


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file ([] when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines() if line.strip()]


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf8") as fh:
        fh.write(json.dumps(row) + "\n")


def kept_weights(run_dir: Path, step: int) -> dict[str, Any]:
    """The raw (not interpolated) weights of the checkpoint the guard kept."""
    from safetensors.torch import load_file

    path = run_dir / "checkpoints" / f"step-{step}" / "model.safetensors"
    if not path.exists():
        raise SystemExit(f"{run_dir.name}: the kept checkpoint {path} is missing (pruned or not yet written)")
    return load_file(str(path))


def check_rebuilt(name: str, alpha: float, score: float, logged: dict[int, float], best_step: int) -> None:
    """Stop unless the rebuilt split gives the logged score at the start (weight 0) and the kept step (1)."""
    step = {0.0: 0, 1.0: best_step}.get(alpha)
    if step in logged and abs(score - logged[step]) > 1e-4 * abs(logged[step]):
        raise SystemExit(
            f"{name}: the rebuilt validation split scores {score:.4f} at step {step}, the run "
            f"logged {logged[step]:.4f}: not the rows the trainer held out (same data options, reader?)"
        )


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: mean validation score and dev metrics over seeds, per method and weight."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["alpha"]), []).append(r)
    keys = ("recall@2", "recall@5", "indirect_recall@5", "mrr")
    lines = [
        "| method | weight | seeds | validation | R@2 | R@5 | indirect R@5 | MRR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (variant, alpha), group in sorted(groups.items()):
        val = sum(r["validation_score"] for r in group) / len(group)
        dev = [sum(r["dev"][k] for r in group) / len(group) for k in keys]
        lines.append(
            f"| {variant} | {alpha:g} | {len(group)} | {val:.3f} | "
            + " | ".join(f"{v:.3f}" for v in dev)
            + " |"
        )
    return "\n".join(lines)


def logged_validation(run_dir: Path, ks: Sequence[int], split: str = "validation") -> dict[int, float]:
    """step -> the guard's validation score, from the run's metrics.jsonl (``split``: the rows' log name).

    A dev set that served as the validation set is logged without the score: it is the mean nDCG@k.
    """
    from gumbel_rag.trainer import mean_ndcg

    out = {}
    for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("split") != split:
            continue
        if row.get("score") is not None:
            out[row["step"]] = row["score"]
        elif all(f"ndcg@{k}" in row for k in ks):
            out[row["step"]] = mean_ndcg(row, ks)
    return out


def score_run(run: dict[str, Any], alphas: Sequence[float], ctx: dict[str, Any], sweep_file: Path) -> None:
    """Score the run's kept checkpoint at every weight not yet in ``sweep_file``, appending each row."""
    import torch
    from compare import held_out_count

    from gumbel_rag.evaluation import evaluate_reranker
    from gumbel_rag.trainer import mean_ndcg

    rows = {r["alpha"]: r for r in read_jsonl(sweep_file) if r["name"] == run["name"]}
    todo = [a for a in sorted({0.0, *alphas}) if a not in rows]
    if not todo:
        return
    run_dir = ctx["runs"] / run["name"]
    config = run_config(run_dir)
    held = [
        ex for ex in validation_rows(run, config, ctx["rows"], ctx["reader"], ctx["distractor"]) if ex.gold
    ]
    # Rows held out before training reach the trainer as its dev set, and are logged under that name.
    split = "dev" if held_out_count(run.get("guard", "default")) is not None else "validation"
    trained, model, logged = (
        kept_weights(run_dir, run["best_step"]),
        ctx["model"],
        logged_validation(run_dir, config["eval_ks"], split),
    )
    for alpha in todo:
        if run["best_step"] == 0 and 0.0 in rows:
            # The guard kept the start: every weight is the start, and scores as it does.
            rows[alpha] = {**rows[0.0], "alpha": alpha}
            _append(sweep_file, rows[alpha])
            continue
        with torch.no_grad():
            model.load_state_dict(interpolated(ctx["start"], trained, alpha), strict=False)
        score = mean_ndcg(evaluate_reranker(model, held, ks=config["eval_ks"]), config["eval_ks"])
        check_rebuilt(run["name"], alpha, score, logged, run["best_step"])
        rows[alpha] = {
            **{k: run[k] for k in ("name", "variant", "seed", "best_step")},
            "alpha": alpha,
            "validation_score": score,
            "validation_rows": len(held),
            "dev": evaluate_reranker(model, ctx["dev"], ks=(2, 5)),
        }
        _append(sweep_file, rows[alpha])
        print(f"{run['name']} weight {alpha:g}: validation {score:.4f}", flush=True)


def save_chosen(run: dict[str, Any], alpha: float, ctx: dict[str, Any], target: Path) -> None:
    """Write the run's kept checkpoint interpolated at ``alpha`` as a model directory (atomically)."""
    import torch

    if (target / "model.safetensors").exists():
        return
    model = ctx["model"]
    with torch.no_grad():
        model.load_state_dict(
            interpolated(ctx["start"], kept_weights(ctx["runs"] / run["name"], run["best_step"]), alpha),
            strict=False,
        )
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tmp.rename(target)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Score every (run, weight), choose per run on validation, save the chosen models; their rows."""
    args = parse_args(argv)
    from compare import training_rows  # training/compare.py, beside this script

    from gumbel_rag import GumbelReranker
    from gumbel_rag.data import load_examples
    from gumbel_rag.data.files import atomic_write_text
    from gumbel_rag.defaults import DEFAULT_K
    from gumbel_rag.readers import load_reader

    alphas = [float(a) for a in args.alphas.split(",")]
    if not all(0.0 <= a <= 1.0 for a in alphas):
        raise SystemExit(f"--alphas: weights must lie in [0, 1], got {args.alphas}")
    # As compare.py reads it: append-only, a later row of the same name wins.
    runs = list({r["name"]: r for r in read_jsonl(args.runs / "runs.jsonl")}.values())
    if not runs:
        raise SystemExit(f"--runs: no runs.jsonl with rows in {args.runs}")
    args.output.mkdir(parents=True, exist_ok=True)
    sweep_file = args.output / "sweep.jsonl"
    rows, distractor = training_rows(args.data_dir, args.no_retrieved, args.train_limit, DEFAULT_K)
    model = GumbelReranker.from_pretrained(args.reranker, device=args.device)
    ctx = {
        "runs": args.runs,
        "rows": rows,
        "distractor": distractor,
        "dev": load_examples(args.data_dir / "dev_distractor_100.json")[0][: args.dev_limit],
        "reader": load_reader(args.reader, device=args.device, max_document_tokens=args.max_document_tokens),
        "model": model,
        "start": {n: p.detach().clone() for n, p in model.named_parameters()},
    }
    trained = [r for r in runs if r["variant"] != "untrained"]
    for run in trained:
        if run.get("best_step") is None:
            print(f"{run['name']}: trained without a validation split (no kept checkpoint): skipped")
            continue
        score_run(run, alphas, ctx, sweep_file)

    sweep = read_jsonl(sweep_file)
    chosen = [r for r in runs if r["variant"] == "untrained"]
    for run in trained:
        by_alpha = {r["alpha"]: r for r in sweep if r["name"] == run["name"]}
        if not by_alpha:
            continue
        alpha = choose({a: r["validation_score"] for a, r in by_alpha.items()})
        save_chosen(run, alpha, ctx, args.output / run["name"])
        chosen.append({**run, "alpha": alpha, "metrics": by_alpha[alpha]["dev"]})
    atomic_write_text(args.output / "runs.jsonl", "".join(json.dumps(r) + "\n" for r in chosen))
    print(summary_table(sweep))
    for r in chosen:
        if "alpha" in r:
            m = r["metrics"]
            print(
                f"{r['name']}: weight {r['alpha']:g} chosen (kept step {r['best_step']}): dev R@2 "
                f"{m['recall@2']:.3f} R@5 {m['recall@5']:.3f} indirect R@5 {m['indirect_recall@5']:.3f}"
            )
    return chosen


if __name__ == "__main__":
    main()
