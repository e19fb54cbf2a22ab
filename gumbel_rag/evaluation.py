"""Evaluate a reranker on labelled QA examples: Recall@k, NDCG@k, MRR, and indirect Recall@k."""

from __future__ import annotations

import re
import string
import warnings
from collections.abc import Sequence

from tqdm.auto import tqdm

from gumbel_rag.data import QAExample
from gumbel_rag.metrics import mean_metrics, ranking_metrics, recall_at_k
from gumbel_rag.reranker import GumbelReranker

__all__ = ["evaluate_reranker", "normalize_answer", "rank_examples"]


def normalize_answer(text: str) -> str:
    """SQuAD/HotpotQA answer normalisation: lower case, no punctuation, articles or extra spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _indirect_gold(example: QAExample) -> list[int]:
    """Gold candidates that do not contain any normalised answer (needed only for the reasoning)."""
    answers = [normalize_answer(a) for a in example.answers if normalize_answer(a)]
    return [
        i
        for i in example.gold or []
        if not any(a in normalize_answer(example.candidates[i].content) for a in answers)
    ]


def rank_examples(
    reranker: GumbelReranker, examples: Sequence[QAExample], *, chunk: int = 16, progress: bool = False
) -> list[list[int]]:
    """Candidate indices of each example, best first, by the reranker's (noise-free) scores."""
    rankings: list[list[int]] = []
    for start in tqdm(range(0, len(examples), chunk), desc="ranking", disable=not progress):
        part = examples[start : start + chunk]
        with warnings.catch_warnings():
            # Truncation of long passages is expected here and would repeat once per chunk.
            warnings.filterwarnings("ignore", message=".*exceed the model's limit", category=UserWarning)
            scores = reranker.score_batch(
                [ex.question for ex in part], [[c.content for c in ex.candidates] for ex in part]
            )
        rankings.extend(sorted(range(len(s)), key=lambda i, s=s: -s[i]) for s in scores)
    return rankings


def evaluate_reranker(
    reranker: GumbelReranker,
    examples: Sequence[QAExample],
    ks: Sequence[int] = (2, 5),
    *,
    progress: bool = False,
) -> dict[str, float]:
    """Mean ranking metrics over the examples that have gold labels (others are not counted).

    Returns ``recall@k``, ``ndcg@k``, ``mrr``, ``indirect_recall@k`` (over examples with an
    indirectly relevant gold document) and the counts ``n`` and ``n_indirect``.
    """
    labelled = [ex for ex in examples if ex.gold]
    if not labelled:
        return {"n": 0}
    rankings = rank_examples(reranker, labelled, progress=progress)
    rows = [ranking_metrics(r, ex.gold or [], ks) for r, ex in zip(rankings, labelled, strict=True)]
    out = mean_metrics(rows)
    indirect = [(r, _indirect_gold(ex)) for r, ex in zip(rankings, labelled, strict=True)]
    indirect = [(r, g) for r, g in indirect if g]
    for k in ks:
        if indirect:
            out[f"indirect_recall@{k}"] = sum(recall_at_k(r, g, k) for r, g in indirect) / len(indirect)
    out["n"] = len(labelled)
    out["n_indirect"] = len(indirect)
    return out
