"""Worker for tests/test_distributed.py: train tiny models, save this rank's reranker weights.

Run as ``torchrun --nproc_per_node N tests/distributed_train.py RERANKER READER OUTPUT BATCH_SIZE``
(with ACCELERATE_USE_CPU=true on CPU, so that Accelerate uses gloo), or plainly with python.
"""

from __future__ import annotations

import json
import os
import sys
import time

from safetensors.torch import save_file

from gumbel_rag import GumbelReranker, evaluation, trainer
from gumbel_rag.data import generate_multihop
from gumbel_rag.losses import GumbelRerankLoss
from gumbel_rag.readers import load_reader


def main() -> None:
    """Train on 16 questions (4 steps of global batch 4), evaluate on 7, save this rank's weights."""
    reranker_dir, reader_dir, output, batch_size = sys.argv[1:5]
    examples = generate_multihop(16, seed=1, n_candidates=4)
    # 7 dev questions: split unevenly across 2 processes, then gathered.
    dev = generate_multihop(7, seed=9, n_candidates=5)
    reranker = GumbelReranker.from_pretrained(reranker_dir, device="cpu")
    reader = load_reader(reader_dir, device="cpu", max_document_tokens=16)
    loss = GumbelRerankLoss(reader, k=2, noise=False)
    config = trainer.TrainConfig(
        output_dir=output,
        batch_size=int(batch_size),
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        # The mechanics of several processes, without checkpoint selection (it would keep step 0 here).
        select_best=False,
        early_stopping_patience=None,
        mixed_precision="no",
        progress=False,
        save_every=2,
        eval_every=2,
    )
    # Record how many dev questions this process ranks per evaluation, to show the work is split.
    ranked: list[int] = []
    real_rank = evaluation.rank_examples

    def counting_rank(model, share, **kwargs):  # type: ignore[no-untyped-def]
        ranked.append(len(share))
        return real_rank(model, share, **kwargs)

    evaluation.rank_examples = counting_rank
    if rank := int(os.environ.get("RANK", "0")):
        # A loaded machine's slow rank, made certain: it looks at the output directory four seconds after
        # rank 0 could have written this run's logs/ there (trainer.py waits for every rank first).
        real_artifacts = trainer.run_artifacts

        def late_artifacts(output):  # type: ignore[no-untyped-def]
            time.sleep(4.0)
            return real_artifacts(output)

        trainer.run_artifacts = late_artifacts
    result = trainer.train(reranker, loss, examples, config, dev)
    weights = {k: v.detach().contiguous() for k, v in reranker.state_dict().items()}
    # Under FSDP each rank holds only shards (DTensors); the saved model directory is what counts there.
    if not any(hasattr(v, "to_local") for v in weights.values()):
        save_file(weights, os.path.join(output, f"rank{rank}-steps{result.steps}.safetensors"))
    with open(os.path.join(output, f"rank{rank}-ranked.json"), "w", encoding="utf8") as f:
        json.dump(ranked, f)


if __name__ == "__main__":
    main()
