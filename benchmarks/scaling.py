"""G-Rerank step time and peak memory against the number of candidates and the document length.

    python -m benchmarks.scaling            # default reader + reranker; writes docs/performance_scaling.png
    python -m benchmarks.scaling --quick    # tiny random models (what CI runs)

Sweeps N in (10, 20, 50) candidates at 128 reader tokens per document, and 64/128/256 reader tokens
per document at N = 10. Every document is a stretch of HotpotQA text long enough to fill the reader's
budget, so "document length" is the number of tokens the reader really encodes. Each setting times
the G-Rerank step and its floor (interleaved) and measures the G-Rerank step's peak memory.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DocumentSource,
    interleaved,
    machine,
    markdown_table,
    median,
    paired_ratio,
    peak_memory,
    write_json,
)
from benchmarks.training_step import hotpot_examples, load_models, step_functions

DEFAULT_PNG = Path(__file__).resolve().parent.parent / "docs" / "performance_scaling.png"


def run_setting(reranker: Any, reader: Any, source: DocumentSource, n: int, length: int, rounds: int) -> dict:
    """Time floor and G-Rerank steps at ``n`` candidates of ``length`` reader tokens; peak memory too."""
    reader.max_document_tokens = length
    # Reranker tokens run ~15% fewer than the reader's here; +25% makes sure the reader's budget fills.
    examples = hotpot_examples(3, n, int(length * 1.25) + 8, source)
    fns = step_functions(reranker, reader, examples)
    fns = {k: fns[k] for k in ("floor", "grerank")}
    if rounds == 0:
        # Single-shot mode for a busy machine: one untimed-warm-up-free call each, timed under the
        # memory sampler (it costs well under 1% of a step), so the whole sweep runs 2 steps a setting.
        times, mems = {}, {}
        for name, fn in fns.items():
            with peak_memory() as mem:
                times[name] = interleaved({name: fn}, 1, warmup=0)[name]
            mems[name] = mem["peak_mb"]
    else:
        times = interleaved(fns, rounds)
        mems = {}
        for name in ("floor", "grerank"):
            with peak_memory() as mem:
                fns[name]()
            mems[name] = mem["peak_mb"]
    row: dict[str, Any] = {
        "candidates": n,
        "doc_tokens": length,
        "reader_keys": n * length,
        "floor_s": median(times["floor"]),
        "grerank_s": median(times["grerank"]),
        "x_floor": paired_ratio(times, "grerank", "floor"),
    }
    for name in ("floor", "grerank"):
        row[f"{name}_peak_mb"] = mems[name]
    print(markdown_table([row], list(row)), flush=True)
    return row


def plot(rows_n: list[dict], rows_len: list[dict], path: Path) -> None:
    """Two panels (vs candidates, vs document length): step seconds, and peak MB on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, rows, key, label in (
        (axes[0], rows_n, "candidates", "candidates N (128 tokens each)"),
        (axes[1], rows_len, "doc_tokens", "reader tokens per document (N = 10)"),
    ):
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["grerank_s"] for r in rows], "o-", label="G-Rerank step (s)")
        ax.plot(xs, [r["floor_s"] for r in rows], "s--", label="floor (s)")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per step")
        ax.set_xticks(xs)
        twin = ax.twinx()
        twin.plot(xs, [r["grerank_peak_mb"] for r in rows], "^:", color="tab:red", label="G-Rerank peak MB")
        twin.set_ylabel("peak MB above baseline", color="tab:red")
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
    fig.suptitle("G-Rerank training step: time and memory scaling")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep, print a markdown table, write the PNG; returns the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny random models and few rounds (CI)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds (default 5, quick 1; 0: one untimed-warm-up-free shot)",
    )
    parser.add_argument("--candidates", default=None, help="comma-separated N (10,20,50)")
    parser.add_argument(
        "--lengths", default=None, help="comma-separated reader tokens per document (64,128,256)"
    )
    parser.add_argument("--png", default=None, help=f"where to write the plot (default {DEFAULT_PNG})")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    counts = [int(x) for x in (args.candidates or ("3,6" if args.quick else "10,20,50")).split(",")]
    lengths = [int(x) for x in (args.lengths or ("16,32" if args.quick else "64,128,256")).split(",")]
    # The candidate sweep uses 128-token documents (quick: the middle length); the length sweep N = counts[0].
    sweep_length = lengths[len(lengths) // 2] if args.quick else 128
    warnings.filterwarnings("ignore", message=".*were truncated")

    from transformers import AutoTokenizer

    from gumbel_rag.defaults import default_reranker_path

    with tempfile.TemporaryDirectory() as tmp:
        reranker, reader = load_models(args.quick, Path(tmp), max(lengths))
        source = DocumentSource(AutoTokenizer.from_pretrained(str(default_reranker_path())))
        rows_n = [run_setting(reranker, reader, source, n, sweep_length, rounds) for n in counts]
        # The sweeps share the (counts[0], sweep_length) setting: measured once.
        rows_len = [
            rows_n[0]
            if length == sweep_length
            else run_setting(reranker, reader, source, counts[0], length, rounds)
            for length in lengths
        ]
    print("\n## vs candidates")
    cols = ["candidates", "doc_tokens", "floor_s", "grerank_s", "x_floor", "floor_peak_mb", "grerank_peak_mb"]
    print(markdown_table(rows_n, cols))
    print("\n## vs document length")
    print(markdown_table(rows_len, cols))
    png = Path(args.png) if args.png else DEFAULT_PNG
    plot(rows_n, rows_len, png)
    print(f"plot: {png}")
    results = {"machine": machine(), "quick": args.quick, "rounds": rounds, "vs_candidates": rows_n}
    results["vs_length"] = rows_len
    print(f"machine: {results['machine']}")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
