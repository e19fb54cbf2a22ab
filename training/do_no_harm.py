"""Recipe: does fine-tuning keep what the starting reranker knows? In-domain and out-of-domain, per guard.

Two checks, fixed before any result was looked at (docs/results.md, "Do no harm"):

- ``hotpotqa``: train on HotpotQA ``train_distractor_100.json``; in-domain test ``dev_distractor_100.json``;
  out-of-domain test 200 generated multi-hop questions about invented entities (``generate_multihop``,
  seed 1001); out-of-domain *validation* (for choosing a guard's strength) 100 more (seed 2002).
- ``generated``: the reverse, the main job's direction: train on 160 generated questions (seed 0);
  in-domain test 100 generated questions (seed 1002); out-of-domain test HotpotQA dev; out-of-domain
  validation HotpotQA ``train_distractor_100.json``.

Every run trains the default reranker (all-MiniLM-L6-v2) through the default reader at the CPU budget of
docs/results.md (batch 4, lr 2e-5, reader documents cut to 64 tokens, one epoch) with one guard setting,
and stores per-question Recall@2/@5, MRR and indirect Recall@5 on every evaluation set, so that the
paired bootstrap needs no re-ranking. Weight interpolation (WiSE-FT) costs no training: every trained
model is also evaluated interpolated half-way to the starting weights (``<run>+wise0.5``).

Finished runs are appended to ``OUTPUT/runs.jsonl`` and skipped on a rerun (resumable; processes may share
an output when each gets its own ``--guards``/``--checks``).

    python training/do_no_harm.py --output runs/noharm --checks generated --guards none,select,anchor
    python training/do_no_harm.py --output runs/noharm --report-only
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Guard settings: TrainConfig fields, plus the KL anchor's weight (a loss wrapper). "none" is the loop as
# it was before the guards (every row trains, the last step is saved); "select" is the validation split
# with best-checkpoint selection and early stopping alone. Every run trains with interpolation 1 (the
# trained weights); the half-way interpolation is evaluated after training (WISE_ALPHA), so that
# "select+wise0.5" is exactly the shipped default of `gumbel-rag train`.
BASE_SETTINGS: dict[str, Any] = {"interpolation": 1.0}
GUARDS: dict[str, dict[str, Any]] = {
    "none": {"validation_fraction": 0.0, "select_best": False, "early_stopping_patience": None},
    "select": {},
    "anchor1": {"anchor_weight": 1.0},
    "anchor10": {"anchor_weight": 10.0},
    "decay": {"start_decay": 1000.0},
    "lora": {"lora_rank": 8, "learning_rate": 2e-4},
}
METRICS = ("recall@2", "recall@5", "mrr", "indirect_recall@5")
BEGIN, END = "<!-- noharm:begin -->", "<!-- noharm:end -->"
WISE_ALPHA = 0.5


@dataclass
class Check:
    """One direction of the out-of-domain check: what trains, and the evaluation sets."""

    name: str
    train: list = field(default_factory=list)
    sets: dict[str, list] = field(default_factory=dict)  # in_domain, ood, ood_val


def load_checks(data_dir: Path, names: Sequence[str]) -> dict[str, Check]:
    """The checks asked for, with their data (HotpotQA from ``data_dir``, generated questions seeded)."""
    from gumbel_rag.data import generate_multihop, load_examples

    hotpot = {
        f: load_examples(data_dir / f"{f}.json")[0] for f in ("train_distractor_100", "dev_distractor_100")
    }
    checks = {
        "hotpotqa": Check(
            "hotpotqa",
            hotpot["train_distractor_100"],
            {
                "in_domain": hotpot["dev_distractor_100"],
                "ood": generate_multihop(200, seed=1001),
                "ood_val": generate_multihop(100, seed=2002),
            },
        ),
        "generated": Check(
            "generated",
            generate_multihop(160, seed=0),
            {
                "in_domain": generate_multihop(100, seed=1002),
                "ood": hotpot["dev_distractor_100"],
                "ood_val": hotpot["train_distractor_100"],
            },
        ),
    }
    unknown = [n for n in names if n not in checks]
    if unknown:
        raise SystemExit(f"--checks: unknown {unknown}; choose from {list(checks)}")
    return {n: checks[n] for n in names}


def per_question(reranker: Any, examples: Sequence[Any]) -> dict[str, list[float | None]]:
    """Per labelled question: each metric of METRICS (None where indirect recall does not apply)."""
    from gumbel_rag.evaluation import example_metrics

    rows = example_metrics(reranker.eval(), [ex for ex in examples if ex.gold], (2, 5))
    out: dict[str, list[float | None]] = {m: [] for m in METRICS}
    for direct, indirect in rows:
        for m in ("recall@2", "recall@5", "mrr"):
            out[m].append(direct[m])
        out["indirect_recall@5"].append(None if indirect is None else indirect["indirect_recall@5"])
    return out


def evaluate_all(reranker: Any, check: Check) -> dict[str, dict[str, list[float | None]]]:
    """Per-question metrics on every evaluation set of the check."""
    return {name: per_question(reranker, rows) for name, rows in check.sets.items()}


def interpolated(trained: Any, start: Any, alpha: float) -> Any:
    """A copy of ``trained`` with weights ``start + alpha * (trained - start)`` (WiSE-FT)."""
    import copy

    import torch

    out = copy.deepcopy(trained)
    start_state = start.state_dict()
    with torch.no_grad():
        for name, param in out.state_dict().items():
            if param.is_floating_point():
                param.copy_(start_state[name] + alpha * (param - start_state[name]))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the recipe."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/hotpotqa"))
    p.add_argument("--output", type=Path, default=Path("runs/noharm"))
    p.add_argument("--checks", default="generated,hotpotqa", help="comma-separated: generated, hotpotqa")
    p.add_argument("--guards", default=",".join(GUARDS), help=f"comma-separated from {', '.join(GUARDS)}")
    p.add_argument("--methods", default="gumbel", help="comma-separated training methods")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-document-tokens", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps (smoke tests)")
    p.add_argument("--reader", default=None, help="reader (default: SmolLM2-135M-Instruct)")
    p.add_argument("--reranker", default=None, help="starting reranker (default: all-MiniLM-L6-v2)")
    p.add_argument("--limit", type=int, default=None, help="first N rows of every set (smoke tests)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--report", type=Path, default=None, help=f"markdown file whose {BEGIN} ... {END} the tables replace"
    )
    return p.parse_args(argv)


def run_all(args: argparse.Namespace) -> None:
    """Train and evaluate every (check, method, guard, seed) not yet in runs.jsonl."""
    from compare import load_done  # training/compare.py, beside this script

    from gumbel_rag import GumbelReranker, TrainConfig, build_loss, load_reader, train
    from gumbel_rag.losses.anchor import AnchoredLoss

    args.output.mkdir(parents=True, exist_ok=True)
    runs_file = args.output / "runs.jsonl"
    checks = load_checks(args.data_dir, args.checks.split(","))
    if args.limit:
        for check in checks.values():
            check.train = check.train[: args.limit]
            check.sets = {name: rows[: args.limit] for name, rows in check.sets.items()}
    reader = load_reader(args.reader, max_document_tokens=args.max_document_tokens)

    def record(row: dict[str, Any]) -> None:
        with runs_file.open("a", encoding="utf8") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "per_question"}), flush=True)

    for check in checks.values():
        name = f"{check.name}/untrained"
        if name not in load_done(runs_file):
            start = GumbelReranker.from_pretrained(args.reranker)
            record(
                {
                    "name": name,
                    "check": check.name,
                    "variant": "untrained",
                    "per_question": evaluate_all(start, check),
                }
            )
        for method in args.methods.split(","):
            for guard in args.guards.split(","):
                if guard not in GUARDS:
                    raise SystemExit(f"--guards: unknown {guard!r}; choose from {', '.join(GUARDS)}")
                for seed in (int(s) for s in args.seeds.split(",")):
                    variant = f"{method}-{guard}"
                    name = f"{check.name}/{variant}-seed{seed}"
                    if name in load_done(runs_file):
                        continue
                    settings = {**BASE_SETTINGS, **GUARDS[guard]}
                    anchor = settings.pop("anchor_weight", None)
                    reranker = GumbelReranker.from_pretrained(args.reranker)
                    start = GumbelReranker.from_pretrained(args.reranker)
                    loss = build_loss(method, None if method == "supervised" else reader)
                    if anchor:
                        loss = AnchoredLoss(loss, reranker, anchor)
                    config = TrainConfig(
                        output_dir=str(args.output / name),
                        **{
                            "learning_rate": args.lr,
                            "batch_size": 4,
                            "gradient_accumulation_steps": 1,
                            "max_steps": args.max_steps,
                            "seed": seed,
                            "save_every": 10**9,
                            "overwrite": True,
                            "progress": False,
                            **settings,
                        },
                    )
                    began = time.perf_counter()
                    result = train(reranker, loss, check.train, config)
                    row = {
                        "check": check.name,
                        "method": method,
                        "guard": guard,
                        "seed": seed,
                        "settings": GUARDS[guard],
                        "steps": result.steps,
                        "best_step": result.best_step,
                        "stopped_early": result.stopped_early,
                        "validation_rows": result.validation_rows,
                        "seconds": time.perf_counter() - began,
                        "seconds_per_step": result.seconds_per_step,
                    }
                    record(
                        {
                            "name": name,
                            "variant": variant,
                            **row,
                            "per_question": evaluate_all(reranker, check),
                        }
                    )
                    wise = interpolated(reranker, start, WISE_ALPHA)
                    record(
                        {
                            "name": f"{name}+wise{WISE_ALPHA}",
                            "variant": f"{variant}+wise{WISE_ALPHA}",
                            **row,
                            "per_question": evaluate_all(wise, check),
                        }
                    )


def paired_difference(a: Sequence[float | None], b: Sequence[float | None], resamples: int = 10_000) -> dict:
    """mean(a) - mean(b) over the questions both have, with a paired bootstrap 95% interval and p(a <= b)."""
    pairs = np.array(
        [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None], dtype=float
    )
    diff = pairs[:, 0] - pairs[:, 1]
    rng = np.random.default_rng(0)
    draws = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"difference": float(diff.mean()), "ci_low": float(low), "ci_high": float(high),
            "p_not_above": float((draws <= 0).mean()), "p_not_below": float((draws >= 0).mean())}  # fmt: skip


def _mean(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


def report(args: argparse.Namespace) -> str:
    """Markdown tables: per check, each variant's means and its OOD difference to the untrained model."""
    from compare import load_done, markdown_rows

    runs = list(load_done(args.output / "runs.jsonl").values())
    out = []
    for check in sorted({r["check"] for r in runs}):
        rows = [r for r in runs if r["check"] == check]
        base = next(r for r in rows if r["variant"] == "untrained")
        header = ["variant", "seed", "steps", "step kept", *(f"in-domain {m}" for m in METRICS[:3]),
                  "OOD R@5", "OOD MRR",
                  "OOD R@5 - untrained [95% CI]", "OOD MRR - untrained [95% CI]"]  # fmt: skip
        body = []
        for r in sorted(rows, key=lambda r: (r["variant"] != "untrained", r["variant"], r.get("seed", 0))):
            ind, ood = r["per_question"]["in_domain"], r["per_question"]["ood"]
            kept = r.get("best_step")
            cells = [
                r["variant"],
                str(r.get("seed", "")),
                str(r.get("steps", "")),
                "" if kept is None else str(kept),
            ]
            cells += [f"{_mean(ind[m]):.3f}" for m in METRICS[:3]]
            cells += [f"{_mean(ood['recall@5']):.3f}", f"{_mean(ood['mrr']):.3f}"]
            for m in ("recall@5", "mrr"):
                if r is base:
                    cells.append("")
                    continue
                d = paired_difference(ood[m], base["per_question"]["ood"][m])
                cells.append(f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
            body.append(cells)
        out.append(
            f"#### Check `{check}`: in-domain and out-of-domain test sets\n\n" + markdown_rows(header, body)
        )
        val_header = [
            "variant",
            "seed",
            "OOD-val R@5 - untrained [95% CI]",
            "OOD-val MRR - untrained [95% CI]",
        ]
        val_body = []
        for r in sorted(rows, key=lambda r: (r["variant"], r.get("seed", 0))):
            if r is base:
                continue
            cells = [r["variant"], str(r.get("seed", ""))]
            for m in ("recall@5", "mrr"):
                d = paired_difference(r["per_question"]["ood_val"][m], base["per_question"]["ood_val"][m])
                cells.append(f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
            val_body.append(cells)
        out.append(
            f"#### Check `{check}`: the out-of-domain validation set (what the default was chosen on)\n\n"
            + markdown_rows(val_header, val_body)
        )
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    """Run what is missing, then print (and optionally write) the report."""
    args = parse_args(argv)
    if not args.report_only:
        run_all(args)
    text = report(args)
    print(text)
    if args.report:
        page = args.report.read_text(encoding="utf8")
        if BEGIN not in page or END not in page:
            raise SystemExit(f"{args.report}: no {BEGIN} ... {END} markers to write the tables between")
        head, rest = page.split(BEGIN, 1)
        args.report.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}", encoding="utf8")


if __name__ == "__main__":
    main()
