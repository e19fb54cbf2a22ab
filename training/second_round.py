"""Experiment: a second reranking round for two-hop questions (issue 21, part 4).

The reranker scores each document against the question alone, so the bridge paragraph of a two-hop
question, which shares few words with the question, is hard to place second. The second round keeps the
first round's best document first and ranks the others by

    s(d) = (1 - w) * s1(q, d) + w * s2(q + " " + d1, d)

where s1 is the first round's score, d1 the first pick and s2 the same reranker's score against the
question followed by the first pick's text. ``w = 0`` is the plain reranker; ``w = 1`` the untrained
second round alone. The weight is chosen on a *training* file (mean of Recall@2 and Recall@5, the
rule fixed before the run) and then applied, unchanged, to the evaluation file.

    python training/second_round.py --choose-on ../shared/data/hotpotqa/train_distractor_100.json \
        --evaluate-on ../shared/data/hotpotqa/dev_distractor_100.json --json runs/second_round.json
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gumbel_rag import GumbelReranker
from gumbel_rag.data import load_examples
from gumbel_rag.data.files import write_json
from gumbel_rag.data.schema import QAExample
from gumbel_rag.evaluation import evaluate_reranker

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the experiment."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--choose-on", type=Path, required=True, help="labelled training file to pick w on")
    p.add_argument("--evaluate-on", type=Path, required=True, help="labelled file to report on")
    p.add_argument("--reranker", default=None, help="reranker name or path (default: all-MiniLM-L6-v2)")
    p.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS), help="grid of w")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return p.parse_args(argv)


def _top(scores: Sequence[float]) -> int:
    """Index of the highest score (the first among equals, as a stable sort puts it)."""
    return max(range(len(scores)), key=lambda i: scores[i])


def _tops(first: Sequence[Sequence[float]]) -> list[int]:
    """The first round's top index per list (0 for an empty list, which has no pick)."""
    return [_top(s) if s else 0 for s in first]


def second_round_ranking(first: Sequence[float], second: Sequence[float], weight: float) -> list[int]:
    """Indices best first: the first round's top document, then the rest by the mixed score."""
    top = _top(first)
    mixed = {i: (1 - weight) * first[i] + weight * second[i] for i in range(len(first)) if i != top}
    return [top, *sorted(mixed, key=lambda i: -mixed[i])]


def two_round_scores(
    first: torch.Tensor, second: torch.Tensor, valid: torch.Tensor, weight: float
) -> torch.Tensor:
    """(B, N) scores that rank as :func:`second_round_ranking` does, differentiable in both rounds' scores.

    The rest get ``(1 - w) s1 + w s2``; the first round's top (chosen without grad) gets the best of
    those plus 1, so it stays first and its gradient still reaches both rounds. ``valid`` marks real
    candidates; padding is ignored.
    """
    lowest = torch.finfo(first.dtype).min
    top = first.detach().masked_fill(~valid, lowest).argmax(-1, keepdim=True)
    mixed = first + weight * (second - first)
    ceiling = mixed.detach().masked_fill(~valid, lowest).max(-1, keepdim=True).values
    return mixed.scatter_add(1, top, ceiling - mixed.detach().gather(1, top) + 1.0)


def pick_queries(
    queries: Sequence[str], documents: Sequence[Sequence[str]], tops: Sequence[int]
) -> list[str]:
    """The second round's queries: each question followed by its first-round top document."""
    return [f"{q} {docs[t]}" if docs else q for q, docs, t in zip(queries, documents, tops, strict=True)]


def _picks(
    queries: Sequence[str], documents: Sequence[Sequence[str]], first: torch.Tensor, valid: torch.Tensor
) -> list[str]:
    """:func:`pick_queries` for padded first-round scores."""
    top = first.detach().masked_fill(~valid, torch.finfo(first.dtype).min).argmax(-1).tolist()
    return pick_queries(queries, documents, top)


class TwoRoundReranker(GumbelReranker):
    """A reranker that ranks in two rounds: its first pick, then the rest against the question + that pick.

    ``weight`` mixes the rounds (0: the plain reranker). ``forward`` returns the two-round scores with
    grad, so that the relaxed top-k trains both rounds; ``score_batch`` (evaluation, the trainer's
    guard) ranks the same way. The saved model is a plain reranker directory: load it with this class
    and set ``weight`` to rank in two rounds again.
    """

    weight: float = 0.5

    def forward(
        self, queries: Sequence[str], documents: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-round scores (B, N) with grad, and the mask of real candidates."""
        if self.kind != "bi-encoder":
            first, valid = super().forward(queries, documents)
            second, _ = super().forward(_picks(queries, documents, first, valid), documents)
            return two_round_scores(first, second, valid, self.weight), valid
        # A bi-encoder's document embeddings do not depend on the query: both rounds share one pass
        # over the documents (most of the cost), and only the queries are encoded twice.
        flat = [self._clip(d) for docs in documents for d in docs]
        d_emb = self._bucketed([len(d) for d in flat], flat, self._embed_many)
        counts = [len(docs) for docs in documents]
        valid = nn.utils.rnn.pad_sequence(
            [torch.ones(n, dtype=torch.bool, device=self.device) for n in counts], batch_first=True
        )

        def scores(query_texts: Sequence[str]) -> torch.Tensor:
            q_emb = self._embed([self._clip(q) for q in query_texts])
            rows = [(d @ q) / self.temperature for d, q in zip(d_emb.split(counts), q_emb, strict=True)]
            return nn.utils.rnn.pad_sequence(rows, batch_first=True)

        first = scores(queries)
        second = scores(_picks(queries, documents, first, valid))
        return two_round_scores(first, second, valid, self.weight), valid

    def score_batch(self, queries: Sequence[str], documents: Sequence[Sequence[str]]) -> list[list[float]]:
        """Two-round scores of each query's documents (no grad)."""
        first = super().score_batch(queries, documents)
        picks = pick_queries(queries, documents, _tops(first))
        second = super().score_batch(picks, documents)
        out = []
        for f, s in zip(first, second, strict=True):
            if not f:
                out.append([])
                continue
            valid = torch.ones(1, len(f), dtype=torch.bool)
            out.append(two_round_scores(torch.tensor([f]), torch.tensor([s]), valid, self.weight)[0].tolist())
        return out


def round_scores(
    reranker: GumbelReranker, examples: Sequence[QAExample]
) -> list[tuple[list[float], list[float]]]:
    """Per example: the first round's scores and the second round's (question + first pick as the query)."""
    docs = [[c.content for c in ex.candidates] for ex in examples]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exceed the model's limit", category=UserWarning)
        first = reranker.score_batch([ex.question for ex in examples], docs)
        queries = pick_queries([ex.question for ex in examples], docs, _tops(first))
        second = reranker.score_batch(queries, docs)
    return list(zip(first, second, strict=True))


def grid(
    reranker: GumbelReranker,
    examples: Sequence[QAExample],
    weights: Sequence[float],
    scores: Sequence[tuple[list[float], list[float]]] | None = None,
) -> dict[float, dict[str, float]]:
    """Mean metrics (:func:`evaluate_reranker`'s) of every weight on ``examples`` (labelled rows only).

    ``scores``: :func:`round_scores` of the labelled rows, when the caller has them already.
    """
    examples = [ex for ex in examples if ex.gold]
    scores = round_scores(reranker, examples) if scores is None else scores
    return {
        w: evaluate_reranker(reranker, examples, rankings=[second_round_ranking(*s, w) for s in scores])
        for w in weights
    }


def choose(table: dict[float, dict[str, float]]) -> float:
    """The weight with the best mean of Recall@2 and Recall@5 (the smallest weight among equals)."""
    return max(table, key=lambda w: ((table[w]["recall@2"] + table[w]["recall@5"]) / 2, -w))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Pick w on the training file; print and return every w's numbers on both files."""
    args = parse_args(argv)
    reranker = GumbelReranker.from_pretrained(args.reranker).eval()
    chosen_on = grid(reranker, load_examples(args.choose_on)[0], args.weights)
    evaluated = grid(reranker, load_examples(args.evaluate_on)[0], args.weights)
    w = choose(chosen_on)
    for name, table in (("choose-on", chosen_on), ("evaluate-on", evaluated)):
        print(f"\n{name}\n| w | R@2 | R@5 | indirect R@5 | MRR |\n|---|---|---|---|---|")
        for weight, m in table.items():
            mark = " (chosen)" if weight == w else ""
            print(
                f"| {weight:g}{mark} | {m['recall@2']:.3f} | {m['recall@5']:.3f} | "
                f"{m.get('indirect_recall@5', float('nan')):.3f} | {m['mrr']:.3f} |"
            )
    result = {"chosen_weight": w, "choose_on": {str(k): v for k, v in chosen_on.items()}}
    result["evaluate_on"] = {str(k): v for k, v in evaluated.items()}
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
