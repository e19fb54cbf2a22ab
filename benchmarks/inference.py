"""GumbelReranker inference against stock sentence-transformers on the same model and inputs.

    python -m benchmarks.inference            # all-MiniLM-L6-v2 + a MiniLM cross-encoder, HotpotQA texts
    python -m benchmarks.inference --quick    # tiny random models, a few seconds (what CI runs)

Prints, for 10/50/100 candidates of 20-400 tokens: the max |score difference| to stock and the
throughput ratio (stock time / our time, median of interleaved rounds) of the exact path, the
OpenVINO fast path and, for the bi-encoder, the document-embedding cache on a workload where 80% of
candidates were seen before; and the fast path's top-5 agreement with the exact path on the HotpotQA
dev questions.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    DocumentSource,
    interleaved,
    load_hotpot,
    machine,
    markdown_table,
    median,
    minilm_cross_encoder,
    paired_ratio,
    paragraphs,
    tiny_bi_encoder,
    tiny_cross_encoder,
    write_json,
)
from gumbel_rag.testing import max_relative_error


def _have_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def top_k_agreement(a: list[list[float]], b: list[list[float]], k: int = 5) -> float:
    """Mean over questions of |top-k(a) ∩ top-k(b)| / k."""
    total = 0.0
    for x, y in zip(a, b, strict=True):
        kk = min(k, len(x))
        tx = set(sorted(range(len(x)), key=lambda i: -x[i])[:kk])
        ty = set(sorted(range(len(y)), key=lambda i: -y[i])[:kk])
        total += len(tx & ty) / kk
    return total / max(len(a), 1)


def _max_diff(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def _max_rel_diff(a: list[float], b: list[float]) -> float:
    return max_relative_error(a, b)


def _questions(n: int) -> tuple[list[str], list[list[str]]]:
    rows = load_hotpot("dev_distractor_100.json")[:n]
    if not rows:
        rng = random.Random(1)
        words = ["who", "river", "album", "born", "city", "film"]
        qs = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(n)]
        docs = [[" ".join(rng.choice(words) for _ in range(40)) for _ in range(10)] for _ in range(n)]
        return qs, docs
    return [r["question"] for r in rows], [paragraphs(r) for r in rows]


def bench_model(
    kind: str,
    path: Path,
    source: DocumentSource,
    candidate_counts: list[int],
    rounds: int,
    agreement_questions: int,
    cache_calls: int,
) -> dict[str, Any]:
    """All measurements for one model: exact, fast and (bi-encoder) cached paths against stock."""
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from gumbel_rag import GumbelReranker

    exact = GumbelReranker.from_pretrained(path, kind=kind)  # type: ignore[arg-type]
    temperature = exact.temperature
    fast = GumbelReranker.from_pretrained(path, kind=kind, backend="openvino") if _have_openvino() else None
    if kind == "bi-encoder":
        stock: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)

        def stock_scores(query: str, docs: list[str]) -> list[float]:
            q = stock.encode([query], convert_to_tensor=True, batch_size=exact.batch_size)
            d = stock.encode(docs, convert_to_tensor=True, batch_size=exact.batch_size)
            return (torch.nn.functional.cosine_similarity(q, d) / temperature).tolist()

    else:
        stock = CrossEncoder(str(path), device="cpu", local_files_only=True)
        identity = torch.nn.Identity()

        def stock_scores(query: str, docs: list[str]) -> list[float]:
            out = stock.predict(
                [(query, d) for d in docs], batch_size=exact.batch_size, activation_fn=identity
            )
            return [float(x) for x in out]

    questions, _ = _questions(max(candidate_counts))
    rows: list[dict[str, Any]] = []
    for n in candidate_counts:
        query = questions[n % len(questions)]
        docs = source.mixed(n)
        ref = stock_scores(query, docs)
        ours = exact.score(query, docs)
        fns = {
            "stock": lambda q=query, d=docs: stock_scores(q, d),
            "exact": lambda q=query, d=docs: exact.score(q, d),
        }
        row: dict[str, Any] = {
            "model": kind,
            "candidates": n,
            "exact_max_abs_diff": _max_diff(ref, ours),
            "exact_max_rel_diff": _max_rel_diff(ours, ref),
        }
        if fast is not None:
            fast_scores = fast.score(query, docs)
            row["fast_max_abs_diff"] = _max_diff(ref, fast_scores)
            row["fast_max_rel_diff"] = _max_rel_diff(fast_scores, ref)
            fns["fast"] = lambda q=query, d=docs: fast.score(q, d)
        times = interleaved(fns, rounds)
        row["stock_s"] = median(times["stock"])
        row["exact_speedup"] = paired_ratio(times, "stock", "exact")
        if fast is not None:
            row["fast_speedup"] = paired_ratio(times, "stock", "fast")
        rows.append(row)
        print(markdown_table([row], list(row)), flush=True)

    result: dict[str, Any] = {"rows": rows}
    if fast is not None:
        qs, dev_docs = _questions(agreement_questions)
        exact_dev = exact.score_batch(qs, dev_docs)
        fast_dev = fast.score_batch(qs, dev_docs)
        result["fast_top5_agreement"] = top_k_agreement(exact_dev, fast_dev)
        result["fast_dev_max_abs_diff"] = max(
            _max_diff(a, b) for a, b in zip(exact_dev, fast_dev, strict=True)
        )
        result["fast_dev_max_rel_diff"] = max(
            _max_rel_diff(b, a) for a, b in zip(exact_dev, fast_dev, strict=True)
        )
        result["agreement_questions"] = len(qs)
    if kind == "bi-encoder":
        result["cache"] = bench_cache(
            path, source, stock_scores, max(candidate_counts), cache_calls, fast is not None
        )
    return result


def bench_cache(
    path: Path, source: DocumentSource, stock_scores: Any, n: int, calls: int, with_fast: bool
) -> dict[str, Any]:
    """Cached reranker vs stock on calls whose candidates are 80% documents seen in earlier calls."""
    from gumbel_rag import GumbelReranker

    bound = 64 * 2**20
    cached = GumbelReranker.from_pretrained(path, cache_max_bytes=bound)
    variants = {"cache": cached}
    if with_fast:
        variants["cache+fast"] = GumbelReranker.from_pretrained(
            path, cache_max_bytes=bound, backend="openvino"
        )
    rng = random.Random(0)
    pool = source.mixed(2 * n)  # earlier traffic
    for reranker in variants.values():
        reranker.score("warm-up query", pool)
    seen = int(0.8 * n)
    workload = []
    for c in range(calls + 1):  # +1: the warm-up round of interleaved()
        docs = rng.sample(pool, seen) + source.mixed(n - seen)
        rng.shuffle(docs)
        workload.append((f"query {c}", docs))
    counters = dict.fromkeys(["stock", *variants], 0)

    def runner(name: str, fn: Any) -> Any:
        def run() -> Any:
            q, d = workload[counters[name]]
            counters[name] += 1
            return fn(q, d)

        return run

    fns = {"stock": runner("stock", stock_scores)}
    for name, reranker in variants.items():
        fns[name] = runner(name, reranker.score)
    reference = stock_scores(*workload[0])
    cached_scores = cached.score(*workload[0])
    diff = _max_diff(reference, cached_scores)
    rel_diff = _max_rel_diff(cached_scores, reference)
    counters = dict.fromkeys(counters, 0)
    times = interleaved(fns, calls)
    out: dict[str, Any] = {
        "candidates": n,
        "seen_fraction": seen / n,
        "calls": calls,
        "max_bytes": bound,
        "cache_bytes": cached.embedding_cache.nbytes if cached.embedding_cache else 0,
        "cache_entries": len(cached.embedding_cache) if cached.embedding_cache else 0,
        "max_abs_diff_vs_stock": diff,
        "max_rel_diff_vs_stock": rel_diff,
        "stock_s": median(times["stock"]),
    }
    for name in variants:
        out[f"{name}_speedup"] = paired_ratio(times, "stock", name)
    print(markdown_table([out], list(out)), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the inference benchmark and print markdown tables; returns the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny random models and few rounds (CI)")
    parser.add_argument("--candidates", default=None, help="comma-separated candidate counts (10,50,100)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds per setting")
    parser.add_argument("--agreement-questions", type=int, default=None, help="HotpotQA dev questions (100)")
    parser.add_argument("--cache-calls", type=int, default=None, help="calls in the cache workload")
    parser.add_argument("--models", default="bi-encoder,cross-encoder")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    counts = [int(x) for x in (args.candidates or ("4,8" if args.quick else "10,50,100")).split(",")]
    rounds = args.rounds or (1 if args.quick else 9)
    agreement = args.agreement_questions or (3 if args.quick else 100)
    cache_calls = args.cache_calls or (1 if args.quick else 9)
    warnings.filterwarnings("ignore", message=".*were truncated")

    from transformers import AutoTokenizer

    from gumbel_rag.defaults import default_reranker_path

    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            paths = {"bi-encoder": tiny_bi_encoder(Path(tmp)), "cross-encoder": tiny_cross_encoder(Path(tmp))}
        else:
            paths = {"bi-encoder": default_reranker_path(), "cross-encoder": minilm_cross_encoder(Path(tmp))}
        source = DocumentSource(AutoTokenizer.from_pretrained(str(default_reranker_path())))
        for kind in args.models.split(","):
            print(f"\n## {kind}: {paths[kind].name}", flush=True)
            results[kind] = bench_model(kind, paths[kind], source, counts, rounds, agreement, cache_calls)
    results["machine_after"] = machine()
    print("\n## summary")
    summary = []
    for kind in args.models.split(","):
        res = results[kind]
        for row in res["rows"]:
            summary.append({**row, "fast_top5_agreement": res.get("fast_top5_agreement", "")})
    print(
        markdown_table(
            summary,
            [
                "model",
                "candidates",
                "exact_max_abs_diff",
                "exact_speedup",
                "fast_speedup",
                "fast_max_abs_diff",
                "fast_top5_agreement",
            ],
        )
    )
    print(f"machine: {results['machine']}")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
