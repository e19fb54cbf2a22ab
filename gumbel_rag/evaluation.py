"""Evaluate a reranker on labelled QA examples: Recall@k, NDCG@k, MRR, and indirect Recall@k."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from gumbel_rag.data import QAExample
from gumbel_rag.data.answers import answer_in_text, normalize_answer
from gumbel_rag.metrics import mean_metrics, ranking_metrics, recall_at_k
from gumbel_rag.reranker import GumbelReranker

__all__ = [
    "answer_exact_match",
    "answer_f1",
    "evaluate_answers",
    "evaluate_reranker",
    "example_metrics",
    "indirect_gold",
    "normalize_answer",
    "rank_examples",
    "reader_answer_loss",
]


def answer_exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised acceptable answer (SQuAD EM), else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def answer_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best token-overlap F1 of the normalised prediction against the acceptable answers (SQuAD F1)."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
        elif common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def indirect_gold(example: QAExample) -> list[int]:
    """Gold candidates that do not contain the answer (:func:`~gumbel_rag.data.answers.answer_in_text`):
    needed only for the reasoning."""
    texts = example.candidates
    return [i for i in example.gold or [] if not answer_in_text(example.answers, texts[i].content)]


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


def _check_rankings(rankings: Sequence[Sequence[int]] | None, examples: Sequence[QAExample]) -> None:
    """Reject precomputed rankings that do not line up with the examples."""
    if rankings is None:
        return
    if len(rankings) != len(examples):
        raise ValueError(f"rankings has {len(rankings)} entries for {len(examples)} examples")
    for row, (ranking, ex) in enumerate(zip(rankings, examples, strict=True)):
        if sorted(ranking) != list(range(len(ex.candidates))):
            raise ValueError(
                f"rankings[{row}] is not a permutation of the {len(ex.candidates)} candidates of that example"
            )


def example_metrics(
    reranker: GumbelReranker,
    examples: Sequence[QAExample],
    ks: Sequence[int] = (2, 5),
    *,
    progress: bool = False,
    rankings: Sequence[Sequence[int]] | None = None,
) -> list[tuple[dict[str, float], dict[str, float] | None]]:
    """Per labelled example: its ranking metrics, and its indirect recalls (None without indirect gold)."""
    if rankings is None:
        rankings = rank_examples(reranker, examples, progress=progress)
    rows: list[tuple[dict[str, float], dict[str, float] | None]] = []
    for ranking, ex in zip(rankings, examples, strict=True):
        indirect = indirect_gold(ex)
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
    rankings: Sequence[Sequence[int]] | None = None,
) -> dict[str, float]:
    """Mean ranking metrics over the examples that have gold labels (others are not counted).

    Returns ``recall@k``, ``ndcg@k``, ``mrr``, ``indirect_recall@k`` (over examples with an
    indirectly relevant gold document) and the counts ``n`` and ``n_indirect``. With an
    ``accelerate.Accelerator`` of several processes, each ranks its share of the examples and the
    per-example rows are gathered, so every process returns the single-process result.
    ``rankings`` (one per example, from :func:`rank_examples`) skips the ranking pass.
    """
    _check_rankings(rankings, examples)
    labelled = [ex for ex in examples if ex.gold]
    if not labelled:
        return {"n": 0}
    if rankings is not None:
        given = [r for r, ex in zip(rankings, examples, strict=True) if ex.gold]
        rows = example_metrics(reranker, labelled, ks, progress=progress, rankings=given)
    elif accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        with accelerator.split_between_processes(labelled) as share:
            rows = gather_object(example_metrics(reranker, share, ks, progress=progress))
    else:
        rows = example_metrics(reranker, labelled, ks, progress=progress)
    out = mean_metrics([direct for direct, _ in rows])
    indirect = [ind for _, ind in rows if ind is not None]
    out.update(mean_metrics(indirect))
    out["n"] = len(rows)
    out["n_indirect"] = len(indirect)
    return out


def evaluate_answers(
    reranker: GumbelReranker,
    reader: Any,
    examples: Sequence[QAExample],
    k: int = 5,
    *,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    progress: bool = False,
    rankings: Sequence[Sequence[int]] | None = None,
) -> dict[str, float]:
    """Answer EM and F1 of ``reader`` generating from each example's top-``k`` reranked candidates.

    Every example with an answer counts (gold labels are not needed). The documents keep their reranked
    order. Returns ``answer_em@k``, ``answer_f1@k`` and ``n_answers``. ``rankings`` (one per example,
    from :func:`rank_examples`) skips the ranking pass.
    """
    _check_rankings(rankings, examples)
    usable = [ex for ex in examples if ex.answers]
    if not usable:
        return {"n_answers": 0}
    if rankings is None:
        rankings = rank_examples(reranker, usable, progress=progress)
    else:
        rankings = [r for r, ex in zip(rankings, examples, strict=True) if ex.answers]
    em, f1 = [], []
    for start in tqdm(range(0, len(usable), batch_size), desc="answering", disable=not progress):
        part = usable[start : start + batch_size]
        tops = rankings[start : start + batch_size]
        documents = [[ex.candidates[i].content for i in top[:k]] for ex, top in zip(part, tops, strict=True)]
        predictions = reader.generate([ex.question for ex in part], documents, max_new_tokens=max_new_tokens)
        for ex, prediction in zip(part, predictions, strict=True):
            em.append(answer_exact_match(prediction, ex.answers))
            f1.append(answer_f1(prediction, ex.answers))
    return {f"answer_em@{k}": sum(em) / len(em), f"answer_f1@{k}": sum(f1) / len(f1), "n_answers": len(em)}


def reader_answer_loss(
    reranker: GumbelReranker,
    reader: Any,
    examples: Sequence[QAExample],
    k: int = 5,
    *,
    batch_size: int = 4,
    accelerator: Any | None = None,
) -> dict[str, float]:
    """The frozen reader's mean answer NLL per token when it reads the reranker's top ``k`` documents.

    What a reranker is for, measured without gold labels: rank each question's candidates (no noise),
    show the reader only the top ``k`` (a 0 / -inf document mask over all of them), and score the first
    answer. Lower is better. Returns ``answer_nll`` and ``n`` (examples with at least one candidate).
    """
    import torch

    usable = [ex for ex in examples if ex.candidates]
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        with accelerator.split_between_processes(usable) as share:
            losses = gather_object(_answer_losses(reranker, reader, share, k, batch_size))
    else:
        losses = _answer_losses(reranker, reader, usable, k, batch_size)
    if not losses:
        return {"n": 0}
    return {"answer_nll": float(torch.tensor(losses).mean()), "n": len(losses)}


def _answer_losses(
    reranker: GumbelReranker, reader: Any, examples: Sequence[QAExample], k: int, batch_size: int
) -> list[float]:
    import torch

    out: list[float] = []
    rankings = rank_examples(reranker, examples)
    for start in range(0, len(examples), batch_size):
        part, ranked = examples[start : start + batch_size], rankings[start : start + batch_size]
        documents = [[c.content for c in ex.candidates] for ex in part]
        with torch.no_grad():
            batch = reader.prepare([ex.question for ex in part], documents, [ex.answers[0] for ex in part])
            log_mask = torch.full(batch.candidate_mask.shape, float("-inf"), device=reader.device)
            for row, order in enumerate(ranked):
                log_mask[row, list(order[:k])] = 0.0
            out += reader.answer_loss(batch, log_mask).float().cpu().tolist()
    return out
