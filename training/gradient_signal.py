"""Diagnostic: does one G-Rerank step point the reranker at the gold documents, and how noisily?

A better teacher (reader) can only help if its preference reaches the reranker through the relaxed top-k
mask. For labelled training questions this takes the untrained reranker's scores ``w``, draws the Gumbel
noise ``draws`` times for each ``kappa``, and reads the gradient of the reader's answer loss with respect
to ``w`` (no optimizer step). Per question and draw, the descent direction ``g = -dL/dw`` *favours the
gold* by ``a = mean_gold(g) - mean_other(g)``; ``a > 0`` means the step would lift the gold documents'
scores above the others'. Reported per reader and kappa:

- ``right_direction``: share of (question, draw) pairs with ``a > 0`` (0.5 is a coin);
- ``expected_right``: share of questions whose mean ``a`` over the draws is positive (what many steps
  would do on average);
- ``snr``: mean over questions of ``|mean a| / sd a`` over the draws (below 1: a single draw's direction
  is mostly noise).

``dL/dw`` scales with kappa (chain rule), so only directions and ratios are compared across kappas.

    python training/gradient_signal.py --data ../shared/data/hotpotqa/train_distractor_100.json \
        --reader default --reader gemma3-270m --kappa 0.25 1 4 --json runs/gradient_signal.json
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gumbel_rag import GumbelReranker
from gumbel_rag.data import load_examples
from gumbel_rag.data.files import write_json
from gumbel_rag.defaults import DEFAULT_K, DEFAULT_TAU
from gumbel_rag.losses import GumbelRerankLoss
from gumbel_rag.readers import load_reader


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the diagnostic."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="labelled training file")
    p.add_argument("--limit", type=int, default=16, help="first N trainable labelled questions")
    p.add_argument("--reader", action="append", default=None, help="reader name ('default': SmolLM2-135M)")
    p.add_argument("--reranker", default=None, help="reranker (default: all-MiniLM-L6-v2)")
    p.add_argument("--kappa", type=float, nargs="+", default=[0.25, 1.0, 4.0], help="kappa values")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help="relaxed top-k temperature")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="documents the reader sees")
    p.add_argument("--draws", type=int, default=8, help="Gumbel draws per question and kappa")
    p.add_argument("--max-document-tokens", type=int, default=64, help="reader tokens per document")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error(f"--draws must be at least 2 (a spread over draws needs two), got {args.draws}")
    return args


def gold_advantage(descent: Sequence[float], gold: Sequence[int], valid: int) -> float:
    """Mean descent direction on the gold candidates minus its mean on the other real candidates."""
    gold_set = set(gold)
    on_gold = [descent[i] for i in range(valid) if i in gold_set]
    others = [descent[i] for i in range(valid) if i not in gold_set]
    return statistics.fmean(on_gold) - statistics.fmean(others)


def summarize(advantages: Sequence[Sequence[float]]) -> dict[str, float]:
    """The three shares/ratios of the module docstring, from per-question lists of per-draw advantages."""
    flat = [a for row in advantages for a in row]
    means = [statistics.fmean(row) for row in advantages]
    snrs = [abs(statistics.fmean(row)) / (statistics.stdev(row) or float("inf")) for row in advantages]
    return {
        "right_direction": sum(a > 0 for a in flat) / len(flat),
        "expected_right": sum(m > 0 for m in means) / len(means),
        "snr": statistics.fmean(snrs),
        "questions": len(advantages),
    }


def measure(reader: Any, reranker: GumbelReranker, examples: Sequence[Any], args: argparse.Namespace):
    """Per kappa: the summary of the gradient's gold advantage over ``examples``."""
    docs = [[c.content for c in ex.candidates] for ex in examples]
    with torch.no_grad():
        scores, valid = reranker([ex.question for ex in examples], docs)
    prepared = reader.prepare([ex.question for ex in examples], docs, [ex.answers[0] for ex in examples])
    out: dict[str, dict[str, float]] = {}
    for kappa in args.kappa:
        loss = GumbelRerankLoss(reader, k=args.k, kappa=kappa, tau=args.tau)
        advantages: list[list[float]] = [[] for _ in examples]
        for draw in range(args.draws):
            w = scores.detach().clone().requires_grad_(True)
            loss(w, valid, prepared, generator=torch.Generator().manual_seed(draw)).backward()
            for i, ex in enumerate(examples):
                n = int(valid[i].sum())
                advantages[i].append(gold_advantage((-w.grad[i]).tolist(), ex.gold, n))
        out[str(kappa)] = summarize(advantages)
        print(f"kappa {kappa:g}: {out[str(kappa)]}", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Print and return the summaries per reader and kappa."""
    args = parse_args(argv)
    examples = [ex for ex in load_examples(args.data)[0] if ex.gold and ex.answers]
    examples = [ex for ex in examples if len(ex.candidates) > args.k][: args.limit]
    reranker = GumbelReranker.from_pretrained(args.reranker, device="cpu").eval()
    results: dict[str, Any] = {}
    for name in args.reader or ["default"]:
        reader = load_reader(
            None if name == "default" else name, max_document_tokens=args.max_document_tokens
        )
        print(f"reader {name}", flush=True)
        results[name] = measure(reader, reranker, examples, args)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
