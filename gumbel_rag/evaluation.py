"""Evaluate a reranker on labelled QA examples: Recall@k, NDCG@k, MRR, and indirect Recall@k."""

from __future__ import annotations

import re
import string
import warnings
from collections.abc import Sequence
from typing import Any

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


def _example_rows(
    reranker: GumbelReranker, examples: Sequence[QAExample], ks: Sequence[int], progress: bool
) -> list[tuple[dict[str, float], dict[str, float] | None]]:
    """Per labelled example: its ranking metrics, and its indirect recalls (None without indirect gold)."""
    rows: list[tuple[dict[str, float], dict[str, float] | None]] = []
    for ranking, ex in zip(rank_examples(reranker, examples, progress=progress), examples, strict=True):
        indirect = _indirect_gold(ex)
        rows.append(
            (
                ranking_metrics(ranking, ex.gold or [], ks),
                {f"indirect_recall@{k}": recall_at_k(ranking, indirect, k) for k in ks} if indirect else None,
            )
        )
    return rows


def evaluate_reranker(
    reranker: GumbelReranker,
    examples: Sequence[QAExample],
    ks: Sequence[int] = (2, 5),
    *,
    progress: bool = False,
    accelerator: Any | None = None,
) -> dict[str, float]:
    """Mean ranking metrics over the examples that have gold labels (others are not counted).

    Returns ``recall@k``, ``ndcg@k``, ``mrr``, ``indirect_recall@k`` (over examples with an
    indirectly relevant gold document) and the counts ``n`` and ``n_indirect``. With an
    ``accelerate.Accelerator`` of several processes, each ranks its share of the examples and the
    per-example rows are gathered, so every process returns the single-process result.
    """
    labelled = [ex for ex in examples if ex.gold]
    if not labelled:
        return {"n": 0}
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        with accelerator.split_between_processes(labelled) as share:
            rows = gather_object(_example_rows(reranker, share, ks, progress))
    else:
        rows = _example_rows(reranker, labelled, ks, progress)
    out = mean_metrics([direct for direct, _ in rows])
    indirect = [ind for _, ind in rows if ind is not None]
    out.update(mean_metrics(indirect))
    out["n"] = len(rows)
    out["n_indirect"] = len(indirect)
    return out
