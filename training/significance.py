"""Is G-Rerank's lead real? A paired bootstrap over dev questions and seeds, from the saved comparison models.

``training/compare.py`` reports means over seeds; their spread covers the training seed but not which
100 dev questions happened to be asked. This script re-ranks the dev set with every model that
compare.py saved (``OUTPUT/<variant>-seed<N>/``), keeps the per-question Recall@k and indirect Recall@k,
and resamples *both*: the questions (the same draw for both methods, so the comparison stays paired)
and, within each method, its seeds. For the reference method against each other one it reports the
difference of the means, a 95% bootstrap interval, and the share of resamples in which the reference
is not ahead (a one-sided p-value).

    python training/significance.py --output runs/compare-cpu --data-dir ../shared/data/hotpotqa \\
        --json docs/results/significance_cpu.json

Each model's per-question scores are kept in ``OUTPUT/per_question.jsonl``, keyed by its runs.jsonl row
and the dev questions, so that a comparison finished in a later sitting (or on another machine) can be
tested with ``runs.jsonl`` and ``per_question.jsonl`` alone, after the models are gone; a run trained
again (a new row) or another dev set never reuses an old entry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("recall@5", "indirect_recall@5")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the test."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="a compare.py output (runs.jsonl + models)")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/hotpotqa"), help="HotpotQA files")
    p.add_argument("--dev-limit", type=int, default=None, help="first N dev questions (as compare.py)")
    p.add_argument("--reference", default="gumbel", help="the variant compared against every other")
    p.add_argument("--against", default=None, help="comma-separated variants (default: all others)")
    p.add_argument("--reranker", default=None, help="the untrained starting reranker (compare.py's)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    p.add_argument("--device", default=None, help="torch device for ranking")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def per_question(
    reranker: Any, examples: Sequence[Any], k: int = 5, rankings: Sequence[Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """Per labelled question: Recall@k, and indirect Recall@k (NaN where it has no indirect gold).

    ``rankings``: the examples' rankings when the caller has them (else the reranker ranks them).
    """
    from gumbel_rag.evaluation import example_metrics

    rows = example_metrics(reranker, examples, (k,), rankings=rankings)
    direct = [d[f"recall@{k}"] for d, _ in rows]
    indirect = [np.nan if ind is None else ind[f"indirect_recall@{k}"] for _, ind in rows]
    return {f"recall@{k}": np.array(direct), f"indirect_recall@{k}": np.array(indirect)}


def paired_bootstrap(
    reference: np.ndarray, other: np.ndarray, resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Bootstrap of mean(reference) - mean(other) over questions (paired) and seeds (per method).

    ``reference`` and ``other`` are (seeds, questions) arrays of one metric; NaN marks a question the
    metric does not apply to (it is left out of both means). Returns the observed difference, the 2.5%
    and 97.5% quantiles of the resampled differences and ``p_not_ahead``, the share of resamples <= 0.
    """
    keep = ~(np.isnan(reference).any(axis=0) | np.isnan(other).any(axis=0))
    reference, other = reference[:, keep], other[:, keep]
    if reference.shape[1] == 0:
        raise ValueError("no question has this metric for both methods")
    rng = np.random.default_rng(seed)
    n_q = reference.shape[1]
    questions = rng.integers(0, n_q, size=(resamples, n_q))

    def resampled_means(scores: np.ndarray) -> np.ndarray:
        seeds = rng.integers(0, scores.shape[0], size=(resamples, scores.shape[0]))
        # Each resample: the mean over its drawn seeds of the mean over its drawn questions.
        by_seed = scores[:, questions].mean(axis=2)  # (seeds, resamples)
        return np.take_along_axis(by_seed.T, seeds, axis=1).mean(axis=1)

    diffs = resampled_means(reference) - resampled_means(other)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return {
        "difference": float(reference.mean() - other.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_not_ahead": float((diffs <= 0).mean()),
        "questions": int(n_q),
        "seeds": [int(reference.shape[0]), int(other.shape[0])],
    }


def variant_models(output: Path) -> dict[str, list[str]]:
    """Run names per variant in compare.py's runs.jsonl (the untrained row has no saved model)."""
    from compare import load_done  # training/compare.py, beside this script

    path = output / "runs.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: not found (run training/compare.py first)")
    runs: dict[str, list[str]] = {}
    for row in load_done(path).values():
        runs.setdefault(row["variant"], []).append(row["name"])
    return runs


def score_key(run_row: dict[str, Any], dev_key: str, reranker: str | None) -> str:
    """What a run's per-question scores depend on: its runs.jsonl row, the dev questions, the start model."""
    blob = json.dumps({"row": run_row, "dev": dev_key, "reranker": reranker}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf8")).hexdigest()


def dev_key(dev_file: Path, dev_limit: int | None) -> str:
    """Which dev questions were scored: the dev file's content hash and the question limit."""
    return f"{hashlib.sha256(dev_file.read_bytes()).hexdigest()}:{dev_limit}"


def read_scores(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """key -> per-question arrays from ``per_question.jsonl`` (JSON null for NaN); {} without the file."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text(encoding="utf8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["key"]] = {m: np.array(row[m], dtype=float) for m in METRICS}
    return out


def append_scores(path: Path, name: str, key: str, scores: dict[str, np.ndarray]) -> None:
    """Add one run's per-question arrays to ``per_question.jsonl`` (NaN written as null)."""
    lists = {m: [None if np.isnan(v) else float(v) for v in scores[m]] for m in METRICS}
    with path.open("a", encoding="utf8") as fh:
        fh.write(json.dumps({"name": name, "key": key, **lists}) + "\n")


def score_variants(args: argparse.Namespace, names: dict[str, list[str]]) -> dict[str, dict[str, np.ndarray]]:
    """(seeds, questions) arrays of each metric per variant, from ``per_question.jsonl`` or the models."""
    from compare import load_done
    from tqdm.auto import tqdm

    from gumbel_rag import GumbelReranker
    from gumbel_rag.data import load_examples

    dev_file = args.data_dir / "dev_distractor_100.json"
    dev, _ = load_examples(dev_file)
    dev = [ex for ex in (dev[: args.dev_limit] if args.dev_limit else dev) if ex.gold]
    questions = dev_key(dev_file, args.dev_limit)
    run_rows, cache_file = load_done(args.output / "runs.jsonl"), args.output / "per_question.jsonl"
    cached = read_scores(cache_file)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for variant, runs in tqdm(names.items(), desc="variants"):
        rows = []
        for run in runs:
            key = score_key(run_rows[run], questions, args.reranker)
            if key not in cached and run_rows[run].get("scored_by"):
                # Such a model ranks in its own way (a second round, say): its saved weights alone would
                # be scored as a plain reranker, so only the scores its script wrote are used.
                raise SystemExit(
                    f"{run}: its scores come from {run_rows[run]['scored_by']} and are not in {cache_file}"
                )
            if key not in cached:
                path = args.reranker if run == "untrained" else str(args.output / run)
                if run != "untrained" and not (args.output / run / "model.safetensors").exists():
                    raise SystemExit(
                        f"{args.output / run}: no saved model and no scores of this run in "
                        f"{cache_file} (was the run moved or deleted?)"
                    )
                model = GumbelReranker.from_pretrained(path, device=args.device).eval()
                cached[key] = per_question(model, dev)
                append_scores(cache_file, run, key, cached[key])
            rows.append(cached[key])
        scores[variant] = {m: np.stack([r[m] for r in rows]) for m in METRICS}
    return scores


def markdown(reference: str, results: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per compared variant: difference [95% interval], one-sided p."""
    from compare import markdown_rows

    rows = [
        [name]
        + [
            f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], p = {r['p_not_ahead']:.3f}"
            for r in (by_metric[m] for m in METRICS)
        ]
        for name, by_metric in results.items()
    ]
    return markdown_rows([f"{reference} minus", *METRICS], rows)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Score every saved model, bootstrap the reference against each other variant, print the table."""
    args = parse_args(argv)
    names = variant_models(args.output)
    if args.reference not in names:
        raise SystemExit(f"--reference {args.reference!r} is not in {args.output / 'runs.jsonl'}")
    others = args.against.split(",") if args.against else [v for v in names if v != args.reference]
    missing = [v for v in others if v not in names]
    if missing:
        raise SystemExit(f"--against: {', '.join(missing)} not in {args.output / 'runs.jsonl'}")
    scores = score_variants(args, {v: names[v] for v in [args.reference, *others]})
    results = {
        other: {
            m: paired_bootstrap(scores[args.reference][m], scores[other][m], args.resamples, args.seed)
            for m in METRICS
        }
        for other in others
    }
    print(markdown(args.reference, results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"reference": args.reference, "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
