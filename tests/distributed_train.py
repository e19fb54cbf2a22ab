"""Worker for tests/test_distributed.py: train tiny models, save this rank's reranker weights.

Run as ``torchrun --nproc_per_node N tests/distributed_train.py RERANKER READER OUTPUT BATCH_SIZE``
(with ACCELERATE_USE_CPU=true on CPU, so that Accelerate uses gloo), or plainly with python.
"""

from __future__ import annotations

import os
import sys

from safetensors.torch import save_file

from gumbel_rag import GumbelReranker
from gumbel_rag.data import generate_multihop
from gumbel_rag.readers import load_reader
from gumbel_rag.trainer import TrainConfig, train


def main() -> None:
    """Train on 16 generated questions (4 steps of global batch 4) and save this rank's weights."""
    reranker_dir, reader_dir, output, batch_size = sys.argv[1:5]
    examples = generate_multihop(16, seed=1, n_candidates=4)
    reranker = GumbelReranker.from_pretrained(reranker_dir, device="cpu")
    reader = load_reader(reader_dir, device="cpu", max_document_tokens=16)
    config = TrainConfig(
        output_dir=output,
        k=2,
        batch_size=int(batch_size),
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        noise=False,
        mixed_precision="no",
        progress=False,
        save_every=2,
    )
    result = train(reranker, reader, examples, config)
    rank = int(os.environ.get("RANK", "0"))
    weights = {k: v.detach().contiguous() for k, v in reranker.state_dict().items()}
    save_file(weights, os.path.join(output, f"rank{rank}-steps{result.steps}.safetensors"))


if __name__ == "__main__":
    main()
