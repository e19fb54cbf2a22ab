"""Diagnostic: how good is each method's teacher signal at finding the gold documents, before any training?

For labelled HotpotQA questions, ranks every question's candidates by the per-document signal each
distillation baseline would distil (PDist: the reader's answer log-likelihood given one document; LOOP:
the reader's answer loss without one document; ADist: the reader's attention mass) and by the untrained
reranker, and reports Recall@k and indirect Recall@k of those rankings against the gold paragraphs.
A teacher that cannot rank the gold paragraphs cannot teach a reranker to; this is the "signal strength
of the reader" the comparison in docs/results.md refers to.

    python training/teacher_quality.py --data ../shared/data/hotpotqa/train_distractor_100.json --limit 40
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gumbel_rag import GumbelReranker
from gumbel_rag.data import load_examples
from gumbel_rag.evaluation import indirect_gold
from gumbel_rag.losses.distillation import (
    leave_one_out_log_masks,
    single_document_log_masks,
    teacher_answer_losses,
)
from gumbel_rag.metrics import mean_metrics, ranking_metrics, recall_at_k
from gumbel_rag.readers import load_reader

SIGNALS = ("reranker (untrained)", "pdist teacher", "loop teacher", "adist teacher")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the diagnostic."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="labelled file (HotpotQA or QA log with gold)")
    p.add_argument("--limit", type=int, default=40, help="first N labelled questions")
    p.add_argument("--reader", default=None, help="reader (default: SmolLM2-135M-Instruct)")
    p.add_argument("--reranker", default=None, help="reranker (default: all-MiniLM-L6-v2)")
    p.add_argument("--max-document-tokens", type=int, default=128, help="reader tokens per document")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    return p.parse_args(argv)


def signals(reader, reranker, example) -> dict[str, list[float]]:
    """Per candidate, the score each signal gives it (higher = more useful)."""
    docs = [c.content for c in example.candidates]
    batch = reader.prepare([example.question], [docs], [example.answers[0]])
    mask = batch.candidate_mask
    return {
        "reranker (untrained)": reranker.score(example.question, docs),
        "pdist teacher": (-teacher_answer_losses(reader, batch, single_document_log_masks(mask)))[0].tolist(),
        "loop teacher": teacher_answer_losses(reader, batch, leave_one_out_log_masks(mask))[0].tolist(),
        "adist teacher": reader.document_attention(batch)[0].tolist(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Rank by every signal and print a markdown table of Recall@k against the gold paragraphs."""
    args = parse_args(argv)
    examples = [ex for ex in load_examples(args.data)[0] if ex.gold][: args.limit]
    reader = load_reader(args.reader, device=args.device, max_document_tokens=args.max_document_tokens)
    reranker = GumbelReranker.from_pretrained(args.reranker, device=args.device)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in SIGNALS}
    indirect_rows: dict[str, list[dict[str, float]]] = {name: [] for name in SIGNALS}
    with torch.no_grad():
        for ex in tqdm(examples, desc="teachers"):
            indirect = indirect_gold(ex)
            for name, values in signals(reader, reranker, ex).items():
                ranking = sorted(range(len(values)), key=lambda i, v=values: -v[i])
                rows[name].append(ranking_metrics(ranking, ex.gold or [], (1, 2, 5)))
                if indirect:
                    indirect_rows[name].append(
                        {f"indirect_recall@{k}": recall_at_k(ranking, indirect, k) for k in (2, 5)}
                    )
    table = {name: {**mean_metrics(rows[name]), **mean_metrics(indirect_rows[name])} for name in SIGNALS}
    keys = ("recall@1", "recall@2", "recall@5", "mrr", "indirect_recall@2", "indirect_recall@5")
    print(f"{len(examples)} questions from {args.data.name}\n")
    print("| ranked by | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name in SIGNALS:
        print(f"| {name} | " + " | ".join(f"{table[name][k]:.3f}" for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
