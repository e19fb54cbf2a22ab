"""The main job on the offline defaults: fine-tune on generated multi-hop QA, show Recall before/after."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gumbel_rag.data import QAExample, generate_multihop, write_qalog

__all__ = ["run_demo"]


def _table(before: dict[str, float], after: dict[str, float]) -> str:
    keys = [k for k in before if k.startswith(("recall@", "ndcg@", "mrr"))]
    lines = [f"{'metric':<12}{'before':>9}{'after':>9}{'change':>9}"]
    for key in keys:
        lines.append(f"{key:<12}{before[key]:>9.3f}{after[key]:>9.3f}{after[key] - before[key]:>+9.3f}")
    return "\n".join(lines)


def _sample_rerank(model_dir: Path, example: QAExample) -> list[tuple[float, str]]:
    from gumbel_rag import GumbelReranker

    reranker = GumbelReranker.from_pretrained(model_dir)
    ranked = reranker.rerank(example.question, [c.content for c in example.candidates], top_k=3)
    return [(r.score, r.text) for r in ranked]


def run_demo(args: argparse.Namespace) -> int:
    """Generate data, train the default reranker through the default reader, report and save."""
    from gumbel_rag.cli import _load_models, _train_config
    from gumbel_rag.evaluation import evaluate_reranker
    from gumbel_rag.trainer import train

    output: Path = args.output
    data_dir = output / "data"
    examples = generate_multihop(args.train_size + args.dev_size, seed=args.seed)
    train_set, dev_set = examples[: args.train_size], examples[args.train_size :]
    write_qalog(train_set, data_dir / "train.jsonl")
    write_qalog(dev_set, data_dir / "dev.jsonl")
    print(
        f"generated {len(train_set)} training and {len(dev_set)} held-out multi-hop questions in {data_dir}"
    )
    print(f"example: {train_set[0].question} -> {train_set[0].answers[0]}")

    print("loading the default reranker (all-MiniLM-L6-v2) and reader (SmolLM2-135M-Instruct) ...")
    reranker, reader = _load_models(args, None)
    ks = tuple(args.eval_k)
    before = evaluate_reranker(reranker, dev_set, ks=ks)
    config = _train_config(args, output / "model", resume=False)
    result = train(reranker, reader, train_set, config, dev_set)
    after = evaluate_reranker(reranker.eval(), dev_set, ks=ks)

    print(f"\nheld-out Recall before and after fine-tuning (n={after['n']}):")
    print(_table(before, after))
    print(f"\n{result.steps} optimizer steps, {result.seconds_per_step:.2f} s per step")
    sample = dev_set[0]
    print(f"\nreranking a held-out question with the fine-tuned model:\n  Q: {sample.question}")
    for score, text in _sample_rerank(result.model_dir, sample):
        print(f"  {score:7.2f}  {text}")
    (output / "demo_results.json").write_text(
        json.dumps({"before": before, "after": after, "steps": result.steps}, indent=2) + "\n"
    )
    print(f"\nmodel:   {result.model_dir}  (GumbelReranker.from_pretrained or SentenceTransformer loads it)")
    print(f"logs:    {result.log_dir}  (tensorboard --logdir {result.log_dir})")
    print(f"curves:  {result.curves_png}")
    print(f"results: {output / 'demo_results.json'}")
    return 0
