"""Recipe: fine-tune the default reranker with G-Rerank on HotpotQA and compare with the untrained one.

1. Tune: each configuration of ``--grid`` is trained on the training data minus a validation split
   (``--val-size`` questions of train_distractor_100, which have gold labels) and scored on that split.
   The dev set is never used for tuning.
2. Final: the best configuration (by validation Recall@5, then Recall@2) is trained on all training
   data and evaluated on dev_distractor_100, next to the untrained default.

Writes ``results.json`` (every run's metrics, config and seconds per step) to ``--output``.

    python training/hotpotqa.py --data-dir ../shared/data/hotpotqa --output runs/hotpotqa
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

from gumbel_rag import GumbelReranker
from gumbel_rag.data import filter_trainable, load_examples
from gumbel_rag.defaults import DEFAULT_K
from gumbel_rag.evaluation import evaluate_reranker
from gumbel_rag.losses import build_loss, loss_options
from gumbel_rag.readers import load_reader
from gumbel_rag.trainer import TrainConfig, train

DEFAULT_GRID = {"kappa": [1.0, 0.25], "tau": [0.5, 1.0], "k": [5], "learning_rate": [2e-5]}


def parse_args() -> argparse.Namespace:
    """Command-line options of the recipe."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/hotpotqa"))
    p.add_argument("--output", type=Path, default=Path("runs/hotpotqa"))
    p.add_argument("--reranker", default=None, help="starting reranker (default: all-MiniLM-L6-v2)")
    p.add_argument("--reader", default=None, help="reader (default: SmolLM2-135M-Instruct)")
    p.add_argument("--grid", type=json.loads, default=DEFAULT_GRID, help="JSON: option -> list of values")
    p.add_argument("--val-size", type=int, default=40, help="validation questions held out for tuning")
    p.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps (smoke tests)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training rows (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--max-document-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4, help="questions per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--skip-tuning", action="store_true", help="train the first grid point only")
    return p.parse_args()


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values."""
    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def run(
    args: argparse.Namespace, reader: Any, train_set: list, eval_set: list, point: dict[str, Any], name: str
) -> dict[str, Any]:
    """Train a fresh default reranker with one configuration and evaluate it."""
    reranker = GumbelReranker.from_pretrained(args.reranker, device=args.device)
    # A grid point mixes loss options (k, kappa, tau ...) and loop settings (learning_rate ...).
    loss_keys = set(loss_options("gumbel"))
    loss = build_loss("gumbel", reader, **{k: v for k, v in point.items() if k in loss_keys})
    config = TrainConfig(
        output_dir=str(args.output / name),
        seed=args.seed,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        progress=False,
        eval_every=10**9,
        save_every=10**9,
        overwrite=True,
        **{k: v for k, v in point.items() if k not in loss_keys},
    )
    start = time.perf_counter()
    result = train(reranker, loss, train_set, config, None)
    metrics = evaluate_reranker(reranker.eval(), eval_set, ks=(2, 5))
    return {
        "name": name,
        "config": point,
        "metrics": metrics,
        "steps": result.steps,
        "seconds_per_step": result.seconds_per_step,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    """Tune on a training split, train the best configuration on everything, evaluate on dev."""
    args = parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    distractor, _ = load_examples(args.data_dir / "train_distractor_100.json")
    retrieved, _ = load_examples(args.data_dir / "retrieved_500.json")
    dev, _ = load_examples(args.data_dir / "dev_distractor_100.json")
    rng = random.Random(args.seed)
    shuffled = distractor[:]
    rng.shuffle(shuffled)
    val, rest = shuffled[: args.val_size], shuffled[args.val_size :]
    all_train = distractor + retrieved
    if args.limit:
        all_train, rest, retrieved = all_train[: args.limit], rest[: args.limit], retrieved[: args.limit]
    reader = load_reader(args.reader, device=args.device, max_document_tokens=args.max_document_tokens)
    results: dict[str, Any] = {"runs": []}

    def save() -> None:
        (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    baseline = GumbelReranker.from_pretrained(args.reranker, device=args.device)
    results["untrained"] = {
        "val": evaluate_reranker(baseline, val, ks=(2, 5)),
        "dev": evaluate_reranker(baseline, dev, ks=(2, 5)),
    }
    print("untrained:", json.dumps(results["untrained"]), flush=True)
    points = grid_points(args.grid)
    best = points[0]
    if not args.skip_tuning and len(points) > 1:
        scored = []
        for i, point in enumerate(points):
            k = point.get("k", DEFAULT_K)
            tune_set, _ = filter_trainable(rest + retrieved, k)
            row = run(args, reader, tune_set, val, point, f"tune-{i}")
            results["runs"].append({"phase": "tune", **row})
            save()
            print("tune:", json.dumps(row), flush=True)
            scored.append(((row["metrics"]["recall@5"], row["metrics"]["recall@2"]), i))
        best = points[max(scored)[1]]
    final_set, _ = filter_trainable(all_train, best.get("k", DEFAULT_K))
    row = run(args, reader, final_set, dev, best, "final")
    results["runs"].append({"phase": "final", **row})
    results["best"] = best
    save()
    print("final:", json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
