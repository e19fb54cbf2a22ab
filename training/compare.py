"""Recipe: every training method (G-Rerank and the baselines) x seeds on HotpotQA, plus G-Rerank ablations.

Trains a fresh default reranker (all-MiniLM-L6-v2) with each method on train_distractor_100.json +
retrieved_500.json through the default reader (SmolLM2-135M-Instruct), same data, steps and learning rate
for every method, and evaluates on dev_distractor_100.json: Recall@k, NDCG@k, MRR, indirect Recall@k, and
the reader's answer EM/F1 from the reranked top-k. The untrained default is measured next to them.
G-Rerank's kappa/tau come from training/hotpotqa.py, which tunes them on a split of the *training* data;
the dev set is never used to choose anything. Every run trains with the shipped do-no-harm guard (a
validation split of the *training* rows, the best checkpoint, early stopping, half-way interpolation);
``--no-guard`` trains as the tables made before it did (give it its own ``--output``);
``--validation-distractor N`` gives the guard N held-out rows of train_distractor_100.json (the format of
the dev set, so a validation set like the traffic) instead of 10% of all training rows.

Every finished run is appended to ``OUTPUT/runs.jsonl`` and skipped when the command is run again, so an
interrupted comparison resumes; a run killed part-way continues from its newest checkpoint (one every
``--checkpoint-every`` steps; the trainer refuses one of another run's settings); several processes may
share one ``--output`` when each gets its own ``--methods`` (on a 2-core CPU, two single-threaded
processes beat one). At the end the table (mean and spread over seeds) is written between the markers of
``--report`` (docs/results.md), and a bar chart to ``--figure``.

    python training/compare.py --data-dir ../shared/data/hotpotqa --output runs/compare        # full
    python training/compare.py --report-only --output runs/compare                              # tables
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gumbel_rag.defaults import DEFAULT_K, DEFAULT_KAPPA, DEFAULT_TAU, METHODS

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
TABLE_METRICS = (
    "recall@2",
    "recall@5",
    "indirect_recall@5",
    "ndcg@5",
    "mrr",
    "answer_em@5",
    "answer_f1@5",
)
# A checkpoint (weights + optimizer, ~0.3 GB for MiniLM) costs a second or two; a CPU step costs 10-60 s.
CHECKPOINT_EVERY = 10
# The G-Rerank ablations the issue asks for: no noise, smaller k, other tau and kappa.
ABLATIONS = {
    "gumbel-no-noise": {"noise": False},
    "gumbel-k2": {"k": 2},
    "gumbel-k3": {"k": 3},
    "gumbel-tau0.5": {"tau": 0.5},
    "gumbel-kappa1": {"kappa": 1.0},
}


@dataclass
class Variant:
    """One line of the results table: a method with fixed overrides, trained once per seed."""

    name: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)


# TrainConfig settings of a run without the do-no-harm guard (the trained weights of the last step).
NO_GUARD: dict[str, Any] = {
    "validation_fraction": 0.0,
    "select_best": False,
    "early_stopping_patience": None,
    "interpolation": 1.0,
    "eval_every": 10**9,
}


def variants(methods: Sequence[str], ablations: bool) -> list[Variant]:
    """The methods (or ablation names) asked for, then (optionally) every G-Rerank ablation."""
    unknown = [m for m in methods if m not in METHODS and m not in ABLATIONS]
    if unknown:
        # Before any model is loaded: a typo should not cost the untrained evaluation first.
        known = ", ".join((*METHODS, *ABLATIONS))
        raise SystemExit(f"--methods: unknown {', '.join(map(repr, unknown))}; choose from {known}")
    out = [Variant(m, "gumbel", dict(ABLATIONS[m])) if m in ABLATIONS else Variant(m, m) for m in methods]
    if ablations:
        out += [Variant(name, "gumbel", dict(o)) for name, o in ABLATIONS.items() if name not in methods]
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the recipe."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/hotpotqa"), help="HotpotQA files")
    p.add_argument("--output", type=Path, default=Path("runs/compare"), help="runs.jsonl and models go here")
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated methods; an ablation name ({', '.join(ABLATIONS)}) runs just that one",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds per method")
    p.add_argument("--ablations", action="store_true", help="also run the G-Rerank ablations")
    p.add_argument("--train-limit", type=int, default=None, help="first N training rows only (CPU budget)")
    p.add_argument("--no-retrieved", action="store_true", help="train on train_distractor_100 only")
    p.add_argument("--dev-limit", type=int, default=None, help="first N dev questions only")
    p.add_argument("--answer-limit", type=int, default=None, help="dev questions for EM/F1 (default: all)")
    p.add_argument("--answer-k", type=int, default=5, help="documents the reader answers from")
    p.add_argument("--no-answers", action="store_true", help="skip answer EM/F1 (reader generation)")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="G-Rerank relaxed top-k (ablations override)")
    p.add_argument("--kappa", type=float, default=DEFAULT_KAPPA, help="G-Rerank kappa (tuned by hotpotqa.py)")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help="G-Rerank tau (tuned by hotpotqa.py)")
    p.add_argument("--lr", type=float, default=2e-5, help="learning rate, the same for every method")
    p.add_argument("--batch-size", type=int, default=4, help="questions per optimizer step")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training rows, every method")
    p.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps (smoke tests)")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no run that would end past this many minutes (estimated from this call's runs); "
        "rerun to resume, e.g. across short GPU sessions",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=CHECKPOINT_EVERY,
        help="optimizer steps between checkpoints; a run killed part-way continues from its newest",
    )
    p.add_argument("--max-document-tokens", type=int, default=128, help="reader tokens per document")
    p.add_argument(
        "--no-guard",
        action="store_true",
        help="train without the default do-no-harm guard (no validation split or checkpoint selection, "
        "the trained weights saved as they are): how the tables before issue 17 were made",
    )
    p.add_argument(
        "--reader-cache-gb",
        type=float,
        default=0.0,
        help="reuse the reader's document states in up to this many GiB of memory (0: off; exact either way)",
    )
    p.add_argument(
        "--reader-cache-dir",
        type=Path,
        default=None,
        help="spill document states beyond --reader-cache-gb to safetensors files here, so that a second "
        "epoch reads what does not fit in memory instead of encoding it again",
    )
    p.add_argument(
        "--validation-distractor",
        type=int,
        default=None,
        metavar="N",
        help="the guard's validation set: N rows of train_distractor_100.json (the dev format), held out "
        "from training and drawn per seed, instead of 10%% of all training rows",
    )
    p.add_argument("--reranker", default=None, help="starting reranker (default: all-MiniLM-L6-v2)")
    p.add_argument("--reader", default=None, help="reader (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--report", type=Path, default=Path("docs/results.md"), help="markdown file to update")
    p.add_argument("--figure", type=Path, default=Path("docs/figures/results.png"), help="PNG chart")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table and chart")
    p.add_argument("--setup-note", default="", help="one line about the machine/budget, put in the report")
    return p.parse_args(argv)


def load_done(path: Path) -> dict[str, dict[str, Any]]:
    """Finished runs by name (the file is append-only; a later row of the same name wins)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["name"]: row for row in rows}


def evaluate(reranker: Any, reader: Any, dev: list, answer_set: list, args: argparse.Namespace) -> dict:
    """Ranking metrics on dev, and answer EM/F1 on answer_set unless --no-answers."""
    from gumbel_rag.evaluation import evaluate_answers, evaluate_reranker, rank_examples

    rankings = rank_examples(reranker.eval(), dev)
    metrics = evaluate_reranker(reranker, dev, ks=(2, 5), rankings=rankings)
    if not args.no_answers and reader is not None:
        # answer_set is a prefix of dev (--answer-limit), so its rankings are the first ones.
        given = rankings[: len(answer_set)]
        metrics.update(
            evaluate_answers(reranker, reader, answer_set, k=args.answer_k, progress=True, rankings=given)
        )
    return metrics


def training_rows(
    data_dir: Path, no_retrieved: bool, train_limit: int | None, k: int
) -> tuple[list[Any], set[int]]:
    """The rows every method trains on (more than ``k`` candidates), and which are train_distractor_100's.

    The second item holds the object ids of the train_distractor_100.json rows: the pool that
    ``--validation-distractor`` draws from (identity, not question ids, so nothing can collide).
    """
    from gumbel_rag.data import filter_trainable, load_examples

    rows, _ = load_examples(data_dir / "train_distractor_100.json")
    distractor = {id(ex) for ex in rows}
    if not no_retrieved:
        rows += load_examples(data_dir / "retrieved_500.json")[0]
    rows = rows[:train_limit] if train_limit else rows
    return filter_trainable(rows, k)[0], distractor


def run_all(args: argparse.Namespace) -> None:
    """Train and evaluate every (variant, seed) not yet in runs.jsonl."""
    from gumbel_rag import GumbelReranker
    from gumbel_rag.data import load_examples
    from gumbel_rag.losses import build_loss
    from gumbel_rag.readers import DocumentStateCache, load_reader

    started = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    runs_file = args.output / "runs.jsonl"
    # Every method sees the same rows: those with more than k candidates (k of the default G-Rerank).
    rows, distractor = training_rows(args.data_dir, args.no_retrieved, args.train_limit, args.k)
    dev, _ = load_examples(args.data_dir / "dev_distractor_100.json")
    dev = dev[: args.dev_limit] if args.dev_limit else dev
    answer_set = dev[: args.answer_limit] if args.answer_limit else dev
    cache = None
    if args.reader_cache_gb or args.reader_cache_dir:
        cache = DocumentStateCache(args.reader_cache_dir, max_bytes=int(args.reader_cache_gb * 2**30))
    reader = load_reader(
        args.reader, device=args.device, max_document_tokens=args.max_document_tokens, state_cache=cache
    )

    def record(row: dict[str, Any]) -> None:
        with runs_file.open("a", encoding="utf8") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    if "untrained" not in load_done(runs_file):
        base = GumbelReranker.from_pretrained(args.reranker, device=args.device)
        record(
            {
                "name": "untrained",
                "variant": "untrained",
                "metrics": evaluate(base, reader, dev, answer_set, args),
            }
        )
    seeds = [int(s) for s in args.seeds.split(",")]
    durations: list[float] = []
    for variant in variants(args.methods.split(","), args.ablations):
        # G-Rerank's options for its variants; the other methods keep their own defaults.
        settings = {}
        if variant.method == "gumbel":
            settings = {"k": args.k, "kappa": args.kappa, "tau": args.tau, **variant.overrides}
        for seed in seeds:
            name = f"{variant.name}-seed{seed}"
            # Re-read: several processes may share one output (give each its own --methods).
            if name in load_done(runs_file):
                continue
            if out_of_time(args.max_minutes, time.perf_counter() - started, durations):
                print(f"--max-minutes {args.max_minutes} reached before {name}; rerun to resume", flush=True)
                return
            run_start = time.perf_counter()
            reranker = GumbelReranker.from_pretrained(args.reranker, device=args.device)
            loss = build_loss(variant.method, reader if variant.method != "supervised" else None, **settings)
            resume_from = resume_step(args.output / name)
            config = run_config(args, name, seed, resume_from)
            train_part, held_out = rows, None
            if args.validation_distractor:
                train_part, held_out = held_out_rows(rows, distractor, args.validation_distractor, seed)
            start = time.perf_counter()
            result = train_run(reranker, loss, train_part, config, held_out)
            train_seconds = time.perf_counter() - start
            record(
                {
                    "name": name,
                    "variant": variant.name,
                    "method": variant.method,
                    "seed": seed,
                    "settings": settings,
                    **run_facts(result, len(train_part), train_seconds, args, resume_from),
                    "metrics": evaluate(reranker, reader, dev, answer_set, args),
                }
            )
            durations.append(time.perf_counter() - run_start)


def run_config(args: argparse.Namespace, name: str, seed: int, resume_from: int | None = None) -> Any:
    """The TrainConfig of one run: the same optimisation for every method, into ``OUTPUT/name``.

    The shipped guard (validation split of the training rows, best checkpoint, early stopping, half-way
    interpolation) unless ``--no-guard``; dev is never the validation set. ``resume_from`` (see
    :func:`resume_step`) continues a run killed part-way instead of starting it again.
    """
    from gumbel_rag.trainer import TrainConfig

    return TrainConfig(
        output_dir=str(args.output / name),
        learning_rate=args.lr,
        epochs=getattr(args, "epochs", 1),
        batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.max_steps,
        seed=seed,
        save_every=args.checkpoint_every,
        resume=resume_from is not None,
        overwrite=resume_from is None,  # nothing to continue: an earlier attempt's files are replaced
        **(NO_GUARD if getattr(args, "no_guard", False) else {}),
    )


def train_run(
    reranker: Any, loss: Any, rows: Sequence[Any], config: Any, held_out: Sequence[Any] | None
) -> Any:
    """``gumbel_rag.trainer.train`` for one run; a checkpoint of other settings stops with what to do."""
    from gumbel_rag.errors import TrainingError
    from gumbel_rag.trainer import train

    try:
        return train(reranker, loss, rows, config, dev_examples=held_out)
    except TrainingError as err:
        if not config.resume:
            raise
        raise SystemExit(
            f"{err}\n{config.output_dir} is an unfinished run of other settings: rerun with the options "
            "it was started with, or delete that directory to train it afresh"
        ) from err


def resume_step(run_dir: Path) -> int | None:
    """The step a run killed part-way continues from (its newest complete checkpoint), else None.

    None too when the run saved its model (killed while being evaluated: it trains again) or never
    reached a checkpoint.
    """
    from gumbel_rag.checkpoints import checkpoint_step, has_saved_model, newest_complete

    latest, _ = newest_complete(run_dir / "checkpoints")
    if latest is None or has_saved_model(run_dir):
        return None
    return checkpoint_step(latest)


def held_out_rows(
    rows: Sequence[Any], distractor: set[int], n: int, seed: int
) -> tuple[list[Any], list[Any]]:
    """(training rows, validation rows): ``n`` seeded rows of ``rows`` whose ids are in ``distractor``."""
    pool = [ex for ex in rows if id(ex) in distractor]
    if not 0 < n < len(pool):
        raise SystemExit(f"--validation-distractor {n}: choose 1 to {len(pool) - 1} (of {len(pool)} rows)")
    from gumbel_rag.trainer import split_validation

    _, held = split_validation(pool, n / len(pool), seed=seed)
    if len(held) != n:  # split_validation holds out nothing from very few rows, and at most 200
        raise SystemExit(f"--validation-distractor {n}: could not hold out {n} of {len(pool)} rows")
    held_ids = {id(ex) for ex in held}
    return [ex for ex in rows if id(ex) not in held_ids], held


def run_facts(
    result: Any,
    train_rows: int,
    train_seconds: float,
    args: argparse.Namespace,
    resume_from: int | None = None,
) -> dict[str, Any]:
    """What runs.jsonl records of a finished training run besides its name, settings and metrics.

    A run continued from a checkpoint says from which step: its times cover the last sitting only.
    """
    return {
        **({"resumed_from_step": resume_from} if resume_from is not None else {}),
        "train_rows": train_rows,
        "epochs": getattr(args, "epochs", 1),
        "steps": result.steps,
        "seconds_per_step": result.seconds_per_step,
        "guard": guard_name(args),
        "best_step": result.best_step,
        "validation_rows": result.validation_rows,
        "train_seconds": train_seconds,
    }


def guard_name(args: argparse.Namespace) -> str:
    """How a run was guarded, for runs.jsonl: none, the shipped default, or a held-out distractor split."""
    if getattr(args, "no_guard", False):
        return "none"
    return f"distractor-{args.validation_distractor}" if args.validation_distractor else "default"


def held_out_count(guard: str) -> int | None:
    """N of a ``distractor-N`` guard (rows held out of train_distractor_100.json), else None."""
    return int(guard.removeprefix("distractor-")) if guard.startswith("distractor-") else None


def out_of_time(max_minutes: float | None, elapsed_s: float, durations: Sequence[float]) -> bool:
    """Whether one more run (as long as the longest so far) would end past ``max_minutes``."""
    if max_minutes is None:
        return False
    return elapsed_s + max(durations, default=0.0) > 60 * max_minutes


# Per variant: (name, number of seeds, {metric: (mean, sample std)}).
Summary = Sequence[tuple[str, int, dict[str, tuple[float, float]]]]


def summarise(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int, dict[str, tuple[float, float]]]]:
    """Per variant (in first-seen order): number of seeds and (mean, sample std) of each metric."""
    by_variant: dict[str, list[dict[str, float]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row["metrics"])
    out = []
    for variant, metrics in by_variant.items():
        stats = {}
        for key in TABLE_METRICS:
            values = [m[key] for m in metrics if key in m]
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                stats[key] = (statistics.fmean(values), spread)
        out.append((variant, len(metrics), stats))
    return out


def markdown_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: one header row, then the rows (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _mean_cell(stat: tuple[float, float] | None, seeds: int) -> str:
    if stat is None:
        return ""
    return f"{stat[0]:.3f} ± {stat[1]:.3f}" if seeds > 1 else f"{stat[0]:.3f}"


def markdown_table(summary: Summary) -> str:
    """Method x metric table, 'mean ± std' over seeds."""
    metrics = [m for m in TABLE_METRICS if any(m in stats for _, _, stats in summary)]
    rows = [
        [variant, str(n), *(_mean_cell(stats.get(m), n) for m in metrics)] for variant, n, stats in summary
    ]
    return markdown_rows(["method", "seeds", *metrics], rows)


def contrasts(
    summary: Summary, reference: str = "gumbel", keys: Sequence[str] = ("recall@5", "indirect_recall@5")
) -> list[tuple[str, dict[str, tuple[float, float | None]]]]:
    """``reference`` minus every other variant, per metric: (difference of means, its standard error).

    The standard error is Welch's ``sqrt(s1^2/n1 + s2^2/n2)`` over seeds; the untrained model is
    deterministic (variance 0); a trained variant with one seed has no spread, so its error is None.
    """
    found = {name: (n, stats) for name, n, stats in summary}
    if reference not in found:
        return []
    n_ref, ref = found[reference]
    out = []
    for name, (n, stats) in found.items():
        if name == reference:
            continue
        cells: dict[str, tuple[float, float | None]] = {}
        for key in keys:
            if key not in ref or key not in stats:
                continue
            variance = 0.0 if name == "untrained" else (stats[key][1] ** 2 / n if n > 1 else None)
            se = None if variance is None or n_ref < 2 else (ref[key][1] ** 2 / n_ref + variance) ** 0.5
            cells[key] = (ref[key][0] - stats[key][0], se)
        out.append((name, cells))
    return out


def _contrast_cell(cell: tuple[float, float | None] | None) -> str:
    if cell is None:
        return ""
    diff, se = cell
    if se is None:
        return f"{diff:+.3f} (one seed: no spread)"
    if se == 0:
        return f"{diff:+.3f}"
    return f"{diff:+.3f} ± {se:.3f} ({diff / se:+.1f} SE)"


def contrast_table(rows: Sequence[tuple[str, dict[str, tuple[float, float | None]]]], reference: str) -> str:
    """Markdown: 'difference ± standard error (how many errors)' of ``reference`` against each variant."""
    keys = list(dict.fromkeys(key for _, cells in rows for key in cells))
    body = [[name, *(_contrast_cell(cells.get(key)) for key in keys)] for name, cells in rows]
    return markdown_rows([f"{reference} minus", *keys], body)


def plot(summary: Summary, path: Path) -> None:
    """Grouped bars of Recall@5 and indirect Recall@5 per method, with the seed spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _, _ in summary]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 3.6))
    width = 0.38
    for j, key in enumerate(("recall@5", "indirect_recall@5")):
        means = [stats.get(key, (0.0, 0.0))[0] for _, _, stats in summary]
        spreads = [stats.get(key, (0.0, 0.0))[1] for _, _, stats in summary]
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        ax.bar(xs, means, width, yerr=spreads, capsize=3, label=key)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    low = min(stats.get("recall@5", (1.0, 0))[0] for _, _, stats in summary)
    ax.set_ylim(max(0.0, low - 0.15), 1.0)
    ax.set_ylabel("dev_distractor_100")
    ax.legend(loc="upper left", ncol=2)  # above the bars: they stop below 0.95
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spread(values: Iterable[int]) -> str:
    """One number, or the range where runs differ (early stopping ends runs at different steps)."""
    seen = sorted(set(values)) or [0]
    return str(seen[0]) if len(seen) == 1 else f"{seen[0]}-{seen[-1]}"


def write_report(args: argparse.Namespace) -> None:
    """Rewrite the table between the markers of --report and the chart at --figure."""
    rows = list(load_done(args.output / "runs.jsonl").values())
    if not rows:
        raise SystemExit(f"no finished runs in {args.output / 'runs.jsonl'}")
    summary = summarise(rows)
    trained = [r for r in rows if r["variant"] != "untrained"]
    setup = (
        f"{len(trained)} training runs; {_spread(r['train_rows'] for r in trained)} training rows, "
        f"{_spread(r['steps'] for r in trained)} optimizer steps each; "
        f"python {platform.python_version()}. {args.setup_note}".strip()
    )
    block = f"{BEGIN}\n{markdown_table(summary)}\n\n{setup}\n"
    versus = contrasts(summary)
    if versus:
        block += (
            "\nG-Rerank against each row: difference of the means ± its standard error over training seeds "
            "(Welch). About 2 SE or more is unlikely to be seed noise; every row is scored on the same dev "
            "questions, so question-sampling noise is not in it.\n\n"
            + contrast_table(versus, "gumbel")
            + "\n"
        )
    block += END
    text = args.report.read_text() if args.report.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.report.write_text(head + block + tail)
    plot(summary, args.figure)
    print(markdown_table(summary))


def main(argv: Sequence[str] | None = None) -> None:
    """Run what is missing, then write the report."""
    args = parse_args(argv)
    variants(args.methods.split(","), args.ablations)  # refuses unknown names before anything loads
    if args.no_guard and args.validation_distractor:
        raise SystemExit("--no-guard trains without a validation set: drop --validation-distractor")
    if not args.report_only:
        run_all(args)
    write_report(args)


if __name__ == "__main__":
    main()
