"""Compute the memory a G-Rerank step needs as the reader grows (printed as a markdown table).

Per process: the frozen reader's weights (bf16, no gradients, no optimizer state), the no-grad key/value
cache of the candidate documents, and the trainable reranker with its gradients and AdamW state (fp32).
Architecture numbers are the published configs of each model.

    python training/memory_estimate.py --candidates 10 --doc-tokens 128 --batch 4
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class Arch:
    """The numbers of a decoder config that size the weights and the KV cache."""

    name: str
    params: float
    layers: int
    kv_heads: int
    head_dim: int


READERS = [
    Arch("SmolLM2-135M-Instruct (default)", 134.5e6, 30, 3, 64),
    Arch("Gemma-3-270M", 268.1e6, 18, 1, 256),
    Arch("Qwen2.5-1.5B-Instruct", 1.54e9, 28, 2, 128),
    Arch("Llama-3.2-3B-Instruct", 3.21e9, 28, 8, 128),
    Arch("Llama-2-7B (CEPE's base)", 6.74e9, 32, 32, 128),
    Arch("Mistral-7B-Instruct", 7.24e9, 32, 8, 128),
]
RERANKER_PARAMS = 22.7e6  # all-MiniLM-L6-v2


def kv_bytes_per_token(arch: Arch, bytes_per_value: int = 2) -> int:
    """Keys and values of every layer for one token."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * bytes_per_value


def rows(candidates: int, doc_tokens: int, batch: int) -> list[tuple[str, float, float, float, float]]:
    """(reader, weights GiB, KV cache GiB per step, reranker GiB, total GiB) for each reader."""
    reranker = RERANKER_PARAMS * (4 + 4 + 8) / GIB  # fp32 weights + grads + AdamW moments
    out = []
    for arch in READERS:
        weights = arch.params * 2 / GIB
        cache = kv_bytes_per_token(arch) * candidates * doc_tokens * batch / GIB
        out.append((arch.name, weights, cache, reranker, weights + cache + reranker))
    return out


def main() -> None:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--doc-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=4, help="questions per micro-batch and process")
    args = p.parse_args()
    tokens = f"{args.batch} x {args.candidates} x {args.doc_tokens} tokens"
    print(f"| reader | weights (bf16) | document KV cache ({tokens}) | reranker + grads + AdamW | total |")
    print("|---|---|---|---|---|")
    for name, weights, cache, reranker, total in rows(args.candidates, args.doc_tokens, args.batch):
        print(f"| {name} | {weights:.2f} GiB | {cache:.2f} GiB | {reranker:.2f} GiB | {total:.2f} GiB |")


if __name__ == "__main__":
    main()
