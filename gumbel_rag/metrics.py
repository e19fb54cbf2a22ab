"""Ranking metrics against gold documents: Recall@k, NDCG@k and MRR."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["mean_metrics", "mrr", "ndcg_at_k", "ranking_metrics", "recall_at_k"]


def recall_at_k(ranking: Sequence[int], gold: Iterable[int], k: int) -> float:
    """Fraction of the gold documents found among the first k of ``ranking`` (candidate indices)."""
    gold_set = set(gold)
    if not gold_set:
        raise ValueError("recall is undefined without gold documents")
    return len(gold_set.intersection(ranking[:k])) / len(gold_set)


def ndcg_at_k(ranking: Sequence[int], gold: Iterable[int], k: int) -> float:
    """Binary-relevance NDCG@k (Jarvelin & Kekalainen, 2002)."""
    gold_set = set(gold)
    if not gold_set:
        raise ValueError("NDCG is undefined without gold documents")
    dcg = sum(1.0 / math.log2(rank + 2) for rank, idx in enumerate(ranking[:k]) if idx in gold_set)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(gold_set))))
    return dcg / ideal


def mrr(ranking: Sequence[int], gold: Iterable[int]) -> float:
    """Reciprocal rank of the first gold document (0 when none is ranked)."""
    gold_set = set(gold)
    for rank, idx in enumerate(ranking):
        if idx in gold_set:
            return 1.0 / (rank + 1)
    return 0.0


def ranking_metrics(ranking: Sequence[int], gold: Iterable[int], ks: Sequence[int]) -> dict[str, float]:
    """Recall@k and NDCG@k for every k, plus MRR, for one ranked list."""
    gold = list(gold)
    out = {f"recall@{k}": recall_at_k(ranking, gold, k) for k in ks}
    out.update({f"ndcg@{k}": ndcg_at_k(ranking, gold, k) for k in ks})
    out["mrr"] = mrr(ranking, gold)
    return out


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average per-example metric dicts (all with the same keys)."""
    if not rows:
        return {}
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
