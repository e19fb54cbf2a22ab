"""The main job on the offline defaults: fine-tune on generated multi-hop QA, show Recall before/after."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gumbel_rag.data import QAExample, generate_multihop, write_qalog
from gumbel_rag.data.files import write_json

if TYPE_CHECKING:
    from gumbel_rag.losses import RerankLoss
    from gumbel_rag.reranker import GumbelReranker
    from gumbel_rag.trainer import TrainConfig

__all__ = ["make_demo_data", "run_demo"]


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


def make_demo_data(output: Path, train_size: int, dev_size: int, *, seed: int) -> tuple[list, list]:
    """Generate the training and held-out questions and write them under ``output/data``."""
    data_dir = output / "data"
    examples = generate_multihop(train_size + dev_size, seed=seed)
    train_set, dev_set = examples[:train_size], examples[train_size:]
    write_qalog(train_set, data_dir / "train.jsonl")
    write_qalog(dev_set, data_dir / "dev.jsonl")
    print(
        f"generated {len(train_set)} training and {len(dev_set)} held-out multi-hop questions in {data_dir}"
    )
    print(f"example: {train_set[0].question} -> {train_set[0].answers[0]}")
    return train_set, dev_set


def run_demo(
    reranker: GumbelReranker,
    loss: RerankLoss,
    config: TrainConfig,
    train_set: Sequence[QAExample],
    dev_set: Sequence[QAExample],
    *,
    ks: tuple[int, ...],
    output: Path,
) -> int:
    """Measure, train ``reranker`` with ``loss``, measure again, show a reranked question, save results."""
    from gumbel_rag.evaluation import evaluate_reranker
    from gumbel_rag.trainer import train

    before = evaluate_reranker(reranker, dev_set, ks=ks)
    # No dev set for train(): it would pick its checkpoint on the held-out questions measured below. The
    # trainer holds out its own validation split of the training questions instead.
    result = train(reranker, loss, train_set, config)
    after = evaluate_reranker(reranker.eval(), dev_set, ks=ks)

    print(f"\nheld-out Recall before and after fine-tuning (n={after['n']}):")
    print(_table(before, after))
    kept = f"step {result.best_step}" if result.best_step is not None else "the last step"
    print(
        f"\n{result.steps} optimizer steps, {result.seconds_per_step:.2f} s per step; validation split: "
        f"{result.validation_rows} of the {len(train_set)} training questions held out, weights of {kept} "
        f"kept{' (stopped early)' if result.stopped_early else ''}"
    )
    sample = dev_set[0]
    print(f"\nreranking a held-out question with the fine-tuned model:\n  Q: {sample.question}")
    for score, text in _sample_rerank(result.model_dir, sample):
        print(f"  {score:7.2f}  {text}")
    write_json(
        output / "demo_results.json",
        {
            "before": before,
            "after": after,
            "steps": result.steps,
            "validation_rows": result.validation_rows,
            "best_step": result.best_step,
            "stopped_early": result.stopped_early,
        },
    )
    print(f"\nmodel:   {result.model_dir}  (GumbelReranker.from_pretrained or SentenceTransformer loads it)")
    print(f"logs:    {result.log_dir}  (tensorboard --logdir {result.log_dir})")
    print(f"curves:  {result.curves_png}")
    print(f"results: {output / 'demo_results.json'}")
    return 0
