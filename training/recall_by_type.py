"""Diagnostic: where does Recall@k fall short? Per HotpotQA question type (bridge / comparison).

Ranks every labelled question of a HotpotQA file with each reranker given and reports, per question type
(the file's ``type`` field: ``bridge`` or ``comparison``), the number of questions, Recall@k, and each
type's share of the Recall@k *gap* (the gold paragraphs missing from the top k, summed over questions):
the part of the shortfall a remedy aimed at one type could recover at most.

    python training/recall_by_type.py --data ../shared/data/hotpotqa/dev_distractor_100.json
    python training/recall_by_type.py --data ... --reranker runs/compare/gumbel-seed0 --json out.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gumbel_rag import GumbelReranker
from gumbel_rag.data import load_examples
from gumbel_rag.data.files import write_json
from gumbel_rag.evaluation import example_metrics


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the diagnostic."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a labelled HotpotQA file")
    p.add_argument(
        "--reranker",
        action="append",
        default=None,
        help="reranker name or path (repeatable; default: the untrained all-MiniLM-L6-v2)",
    )
    p.add_argument("--k", type=int, nargs="+", default=[2, 5], help="cut-offs")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return p.parse_args(argv)


def by_type(types: Sequence[str], recalls: dict[int, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per type: questions, mean Recall@k and the type's share of the summed Recall@k gap (1 - recall)."""
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(types)):
        rows = [i for i, t in enumerate(types) if t == kind]
        entry: dict[str, float] = {"n": len(rows)}
        for k, values in recalls.items():
            gap = sum(1 - v for v in values)
            entry[f"recall@{k}"] = sum(values[i] for i in rows) / len(rows)
            entry[f"share_of_gap@{k}"] = sum(1 - values[i] for i in rows) / gap if gap else 0.0
        out[kind] = entry
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Print (and optionally write) the per-type table for each reranker."""
    args = parse_args(argv)
    examples = [ex for ex in load_examples(args.data)[0] if ex.gold]
    types = [str(ex.metadata.get("type", "unknown")) for ex in examples]
    results: dict[str, Any] = {}
    for name in args.reranker or [None]:
        reranker = GumbelReranker.from_pretrained(name).eval()
        rows = example_metrics(reranker, examples, tuple(args.k))
        recalls = {k: [direct[f"recall@{k}"] for direct, _ in rows] for k in args.k}
        table = by_type(types, recalls)
        label = name or "untrained all-MiniLM-L6-v2"
        results[label] = table
        print(f"{label} ({args.data.name}):")
        for kind, entry in table.items():
            cells = ", ".join(
                f"R@{k} {entry[f'recall@{k}']:.3f} ({entry[f'share_of_gap@{k}']:.0%} of the gap)"
                for k in args.k
            )
            print(f"  {kind:<11} n={int(entry['n']):>3}  {cells}")
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
