"""Experiment: the second reranking round trained through the relaxed top-k (issue 21, part 4).

Untrained, the second round does not win (``training/second_round.py``; docs/results.md). Here
:class:`second_round.TwoRoundReranker` is trained with G-Rerank: its two-round scores (the first pick,
then ``(1 - w) s1(q, d) + w s2(q + " " + d1, d)``) feed the relaxed top-k mask, so the answer loss of the
reader trains the first round and the second round ("what the first pick points to") together. The
rest is ``training/compare.py``'s G-Rerank run, on the same rows and seeds: the training weight ``w``
is fixed before the run (``--train-weight``), the guard's validation set is the same held-out
train_distractor_100 rows (``--validation-distractor``), and after training the serving weight is chosen
on those held-out rows (second_round.py's rule: best mean of Recall@2 and Recall@5, the smallest weight
among equals; ``w = 0`` is the trained model as a plain reranker). Dev is reported, never chosen on.

Each finished seed is appended to ``OUTPUT/runs.jsonl`` in compare.py's format (variant
``gumbel-2round``) with its per-question dev scores in ``OUTPUT/per_question.jsonl``, so that
``training/significance.py`` compares it with the plain G-Rerank runs of the same output; a rerun skips
the seeds already there.

    python training/compare.py --output runs/compare-valdist30 --methods gumbel --validation-distractor 30
    python training/second_round_trained.py --output runs/compare-valdist30 --validation-distractor 30
    python training/significance.py --output runs/compare-valdist30 --reference gumbel-2round
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gumbel_rag.defaults import DEFAULT_K, DEFAULT_KAPPA, DEFAULT_TAU

VARIANT = "gumbel-2round"
SCORED_BY = "training/second_round_trained.py"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the experiment (the data and training options are compare.py's)."""
    from compare import CHECKPOINT_EVERY
    from second_round import WEIGHTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/hotpotqa"), help="HotpotQA files")
    p.add_argument("--output", type=Path, required=True, help="a compare.py output: runs.jsonl, models")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--train-weight", type=float, default=0.5, help="w of the second round while training")
    p.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS), help="serving w to choose from")
    p.add_argument(
        "--validation-distractor", type=int, default=30, metavar="N", help="as compare.py (required here)"
    )
    p.add_argument("--train-limit", type=int, default=None, help="as compare.py")
    p.add_argument("--no-retrieved", action="store_true", help="as compare.py")
    p.add_argument("--dev-limit", type=int, default=None, help="as compare.py")
    p.add_argument("--lr", type=float, default=2e-5, help="as compare.py")
    p.add_argument("--batch-size", type=int, default=4, help="as compare.py")
    p.add_argument("--max-steps", type=int, default=None, help="as compare.py")
    p.add_argument("--max-document-tokens", type=int, default=128, help="as compare.py")
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, help="as compare.py")
    p.add_argument("--reader-cache-gb", type=float, default=0.0, help="as compare.py")
    p.add_argument("--reranker", default=None, help="as compare.py")
    p.add_argument("--reader", default=None, help="as compare.py")
    p.add_argument("--device", default=None, help="as compare.py")
    args = p.parse_args(argv)
    if not 0.0 <= args.train_weight <= 1.0 or not all(0.0 <= w <= 1.0 for w in args.weights):
        raise SystemExit("--train-weight and --weights must lie in [0, 1]")
    return args


def run_seed(
    seed: int, args: argparse.Namespace, ctx: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one seed, choose its serving weight on the held-out rows; its runs.jsonl row and dev scores."""
    from compare import held_out_rows, resume_step, run_config, run_facts, train_run
    from second_round import TwoRoundReranker, choose, grid, round_scores, second_round_ranking
    from significance import per_question

    from gumbel_rag import GumbelReranker
    from gumbel_rag.losses import build_loss

    name = f"{VARIANT}-seed{seed}"
    train_part, held = held_out_rows(ctx["rows"], ctx["distractor"], args.validation_distractor, seed)
    reranker = TwoRoundReranker.from_pretrained(args.reranker, device=args.device)
    reranker.weight = args.train_weight
    settings = {"k": DEFAULT_K, "kappa": DEFAULT_KAPPA, "tau": DEFAULT_TAU}
    resume_from = resume_step(args.output / name)
    config = run_config(args, name, seed, resume_from)
    start = time.perf_counter()
    result = train_run(reranker, build_loss("gumbel", ctx["reader"], **settings), train_part, config, held)
    train_seconds = time.perf_counter() - start
    # The saved weights as a plain reranker: round_scores gives both rounds, grid mixes them per weight.
    trained = GumbelReranker.from_pretrained(str(args.output / name), device=args.device).eval()
    on_held = grid(trained, held, args.weights)
    weight = choose(on_held)
    labelled = [ex for ex in ctx["dev"] if ex.gold]
    dev_scores = round_scores(trained, labelled)
    on_dev = grid(trained, labelled, args.weights, scores=dev_scores)
    rankings = [second_round_ranking(*pair, weight) for pair in dev_scores]
    row = {
        "name": name,
        "variant": VARIANT,
        "method": "gumbel",
        "seed": seed,
        "settings": {**settings, "train_weight": args.train_weight},
        "second_round_weight": weight,
        "scored_by": SCORED_BY,
        **run_facts(result, len(train_part), train_seconds, args, resume_from),
        "validation_by_weight": {str(w): m for w, m in on_held.items()},
        "dev_by_weight": {str(w): m for w, m in on_dev.items()},
        "metrics": on_dev[weight],
    }
    return row, per_question(trained, labelled, rankings=rankings)


def record(row: dict[str, Any], scores: dict[str, Any], args: argparse.Namespace) -> None:
    """Append the row to runs.jsonl and its per-question dev scores (at its weight) for the bootstrap."""
    from significance import append_scores, dev_key, score_key

    key = score_key(row, dev_key(args.data_dir / "dev_distractor_100.json", args.dev_limit), args.reranker)
    append_scores(args.output / "per_question.jsonl", row["name"], key, scores)
    with (args.output / "runs.jsonl").open("a", encoding="utf8") as fh:
        fh.write(json.dumps(row) + "\n")
    m = row["metrics"]
    print(
        f"{row['name']}: serving weight {row['second_round_weight']:g}, kept step {row['best_step']}: dev "
        f"R@2 {m['recall@2']:.3f} R@5 {m['recall@5']:.3f} indirect R@5 {m['indirect_recall@5']:.3f}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train every seed not yet in OUTPUT/runs.jsonl; the rows written by this call."""
    args = parse_args(argv)
    from compare import load_done, training_rows

    from gumbel_rag.data import load_examples
    from gumbel_rag.readers import DocumentStateCache, load_reader

    args.output.mkdir(parents=True, exist_ok=True)
    rows, distractor = training_rows(args.data_dir, args.no_retrieved, args.train_limit, DEFAULT_K)
    dev = load_examples(args.data_dir / "dev_distractor_100.json")[0]
    cache = DocumentStateCache(max_bytes=int(args.reader_cache_gb * 2**30)) if args.reader_cache_gb else None
    ctx = {
        "rows": rows,
        "distractor": distractor,
        "dev": dev[: args.dev_limit] if args.dev_limit else dev,
        "reader": load_reader(
            args.reader, device=args.device, max_document_tokens=args.max_document_tokens, state_cache=cache
        ),
    }
    written = []
    for seed in (int(s) for s in args.seeds.split(",")):
        if f"{VARIANT}-seed{seed}" in load_done(args.output / "runs.jsonl"):
            continue
        row, scores = run_seed(seed, args, ctx)
        record(row, scores, args)
        written.append(row)
    return written


if __name__ == "__main__":
    main()
