"""Reusing the reader's document states: epoch 2 against epoch 1, and a log whose documents repeat.

    python -m benchmarks.reader_states           # default reader (SmolLM2-135M) + all-MiniLM-L6-v2
    python -m benchmarks.reader_states --quick   # tiny random models (what CI runs)

Every measurement pairs a reader with a DocumentStateCache against the same reader without one, row by
row in the same process (the CPUs are shared, so each ratio compares two runs under the same load):

- epoch 1: ``reader.prepare`` of each training row, the cache empty (every document a miss, plus the
  cost of storing its states) against the uncached prepare;
- epoch 2: the same rows again, every document a hit in memory;
- epoch 2 from disk: a new cache on the same directory with no memory (``max_bytes=0``), every
  document read back from its safetensors file, as a resumed run would;
- step: one G-Rerank training step (reranker forward and backward, prepare, relaxed top-k mask,
  answer pass with grad, backward) in epoch 2 against the uncached step;
- mined log: one epoch over questions whose candidates are the BM25 top-n over one small corpus, so
  documents repeat across questions; the cache is empty at the start.

It also reports the largest relative difference of the answer loss between cached and uncached batches
(exactness), the peak memory of one prepare and the bytes the cache holds in memory and on disk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    DocumentSource,
    load_hotpot,
    machine,
    markdown_table,
    paragraphs,
    peak_memory,
    write_json,
)
from benchmarks.training_step import load_models


@dataclass
class Row:
    """One training row."""

    question: str
    answer: str
    documents: list[str]


def hotpot(name: str, directory: Path | None) -> list[dict[str, Any]]:
    """HotpotQA rows from ``directory`` (default: ../shared/data/hotpotqa), or [] when absent."""
    if directory is None:
        return load_hotpot(name)
    path = directory / name
    return json.loads(path.read_text(encoding="utf8")) if path.is_file() else []


def training_rows(n_rows: int, n_docs: int, source: DocumentSource, data: Path | None) -> list[Row]:
    """HotpotQA training rows with their paragraphs (generated text when the data is absent)."""
    rows = hotpot("train_distractor_100.json", data) or hotpot("dev_distractor_100.json", data)
    if not rows:
        return [
            Row(f"question {r}?", "an answer", [source.take(60) for _ in range(n_docs)])
            for r in range(n_rows)
        ]
    return [Row(row["question"], row["answer"], paragraphs(row)[:n_docs]) for row in rows[:n_rows]]


def mined_rows(
    n_questions: int, corpus_rows: int, top_n: int, source: DocumentSource, data: Path | None
) -> list[Row]:
    """Questions whose candidates are the BM25 top_n over one corpus (the paragraphs of corpus_rows rows)."""
    import bm25s

    train = hotpot("train_distractor_100.json", data)
    others = hotpot("retrieved_500.json", data) + hotpot("dev_distractor_100.json", data)
    if not train or not others:
        corpus = [source.take(60) for _ in range(corpus_rows * 10)]
        questions = [
            (f"question {i} about {corpus[i % len(corpus)][:30]}?", "an answer") for i in range(n_questions)
        ]
    else:
        corpus = list(dict.fromkeys(p for row in train[:corpus_rows] for p in paragraphs(row)))
        questions = [(row["question"], row["answer"]) for row in (train + others)[:n_questions]]
    index = bm25s.BM25()
    index.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize([q for q, _ in questions], stopwords="en", show_progress=False, return_ids=False)
    docs, _ = index.retrieve(tokens, k=min(top_n, len(corpus)), show_progress=False)
    return [
        Row(q, a, [corpus[int(d)] for d in row_docs])
        for (q, a), row_docs in zip(questions, docs, strict=True)
    ]


def paired(
    rows: list[Row], reference: Callable[[Row], Any], candidate: Callable[[Row], Any]
) -> dict[str, float]:
    """Seconds per row of each, and the median over rows of reference / candidate (alternating order)."""
    ref_times, cand_times = [], []
    for i, row in enumerate(rows):
        order = [(reference, ref_times), (candidate, cand_times)]
        for fn, times in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn(row)
            times.append(time.perf_counter() - start)
    return {
        "reference_s": statistics.median(ref_times),
        "seconds": statistics.median(cand_times),
        "speedup": statistics.median(r / c for r, c in zip(ref_times, cand_times, strict=True)),
        "total_s": sum(cand_times),
        "reference_total_s": sum(ref_times),
        # Over a log that repeats documents the first rows miss and the rest hit: the totals tell.
        "total_speedup": sum(ref_times) / sum(cand_times),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a markdown table and return the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny random models and few rows (CI)")
    parser.add_argument("--rows", type=int, default=None, help="training rows per epoch (default 8, quick 3)")
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--max-document-tokens", type=int, default=128)
    parser.add_argument("--mined-questions", type=int, default=None, help="default 40, quick 6")
    parser.add_argument(
        "--mined-corpus-rows", type=int, default=None, help="default 10 (~100 paragraphs), quick 2"
    )
    parser.add_argument(
        "--hotpot", type=Path, default=None, help="HotpotQA directory (default ../shared/data/hotpotqa)"
    )
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    n_rows = args.rows or (3 if args.quick else 8)
    n_mined = args.mined_questions or (6 if args.quick else 40)
    corpus_rows = args.mined_corpus_rows or (2 if args.quick else 10)
    warnings.filterwarnings("ignore", message=".*were truncated")

    from transformers import AutoTokenizer

    from gumbel_rag.defaults import default_reranker_path
    from gumbel_rag.gumbel import relaxed_topk_log_mask
    from gumbel_rag.readers import DocumentStateCache

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        reranker, reader = load_models(args.quick, tmp_path, args.max_document_tokens)
        source = DocumentSource(AutoTokenizer.from_pretrained(str(default_reranker_path())))
        rows = training_rows(n_rows, args.candidates, source, args.hotpot)
        cache = DocumentStateCache(tmp_path / "states", max_bytes=8 * 2**30)

        def prepare(r: Row) -> Any:
            return reader.prepare([r.question], [r.documents], [r.answer])

        def with_cache(fn: Callable[[Row], Any], state_cache: Any) -> Callable[[Row], Any]:
            def run(r: Row) -> Any:
                reader.state_cache = state_cache
                try:
                    return fn(r)
                finally:
                    reader.state_cache = None

            return run

        start = time.perf_counter()
        reader.state_fingerprint()  # the one-off hash of the weights, reported apart from epoch 1
        fingerprint_s = time.perf_counter() - start

        results_rows = []
        epoch1 = paired(rows, prepare, with_cache(prepare, cache))
        results_rows.append({"measure": "prepare, epoch 1 (cache filling)", **epoch1})
        epoch2 = paired(rows, prepare, with_cache(prepare, cache))
        results_rows.append({"measure": "prepare, epoch 2 (memory hits)", **epoch2})
        cache.flush()
        disk_bytes = cache.disk_bytes
        from_disk = DocumentStateCache(tmp_path / "states", max_bytes=0)
        epoch2_disk = paired(rows, prepare, with_cache(prepare, from_disk))
        results_rows.append({"measure": "prepare, epoch 2 (disk hits, max_bytes=0)", **epoch2_disk})

        generator = torch.Generator().manual_seed(0)

        def step(r: Row) -> None:
            scores, valid = reranker([r.question], [r.documents])
            batch = prepare(r)
            log_mask = relaxed_topk_log_mask(
                scores.float(), 5, kappa=1.0, tau=0.5, mask=valid, generator=generator
            )
            reader.answer_loss(batch, log_mask.to(reader.device)).mean().backward()
            reranker.zero_grad(set_to_none=True)

        step_times = paired(rows, step, with_cache(step, cache))
        results_rows.append({"measure": "G-Rerank step, epoch 2", **step_times})

        # Exactness: the cached batches (memory and disk) give the uncached loss.
        max_rel = 0.0
        for r in rows:
            zeros = torch.zeros(1, len(r.documents))
            expected = reader.answer_loss(prepare(r), zeros)
            for state_cache in (cache, from_disk):
                got = reader.answer_loss(with_cache(prepare, state_cache)(r), zeros)
                max_rel = max(max_rel, ((got - expected).abs() / expected.abs()).max().item())

        with peak_memory() as plain_mem:
            prepare(rows[0])
        with peak_memory() as cached_mem:
            with_cache(prepare, cache)(rows[0])

        mined = mined_rows(n_mined, corpus_rows, args.candidates, source, args.hotpot)
        slots = sum(len(r.documents) for r in mined)
        distinct = len({d for r in mined for d in r.documents})
        mined_cache = DocumentStateCache(max_bytes=8 * 2**30)
        mined_times = paired(mined, prepare, with_cache(prepare, mined_cache))
        results_rows.append(
            {"measure": f"prepare, mined log ({slots} slots, {distinct} distinct), one epoch", **mined_times}
        )

        document_tokens = sum(len(reader.document_ids(d)) for d in {d for r in rows for d in r.documents})
        results = {
            "machine": machine(),
            "quick": args.quick,
            "rows": n_rows,
            "candidates": args.candidates,
            "max_document_tokens": args.max_document_tokens,
            "data": "hotpotqa" if hotpot("train_distractor_100.json", args.hotpot) else "generated text",
            "fingerprint_s": fingerprint_s,
            "measures": results_rows,
            "max_rel_diff_cached_vs_uncached": max_rel,
            "peak_mb_prepare_uncached": plain_mem["peak_mb"],
            "peak_mb_prepare_cached_hit": cached_mem["peak_mb"],
            "cache_memory_mb": cache.nbytes / 2**20,
            "cache_disk_mb": disk_bytes / 2**20,
            "cache_entries": len(cache),
            "cache_bytes_per_document_token": cache.nbytes / max(1, document_tokens),
            "mined_log": {
                "questions": len(mined),
                "slots": slots,
                "distinct_documents": distinct,
                "stats": mined_cache.stats(),
            },
        }
    print(markdown_table(results_rows, ["measure", "reference_s", "seconds", "speedup", "total_speedup"]))
    print(
        f"max relative loss difference cached vs uncached: {max_rel:.2e}; peak MB of one prepare "
        f"uncached {plain_mem['peak_mb']:.1f}, cached {cached_mem['peak_mb']:.1f}; cache holds "
        f"{results['cache_memory_mb']:.1f} MB in memory, {results['cache_disk_mb']:.1f} MB on disk"
    )
    print(f"machine: {results['machine']}")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
