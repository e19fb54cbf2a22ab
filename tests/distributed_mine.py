"""Worker for tests/test_distributed.py: run ``gumbel-rag mine`` (BM25, then dense) on this process.

Run as ``torchrun --nproc_per_node N tests/distributed_mine.py DATA CORPUS ENCODER OUTPUT_DIR`` (with
ACCELERATE_USE_CPU=true on CPU), or plainly with python. Writes ``bm25.jsonl`` and ``dense.jsonl``
(rank 0 only, by the command itself) and ``rank{R}-work.json``: how many questions this rank sent to
BM25 and how many texts it embedded, to show that the work was split.
"""

from __future__ import annotations

import json
import os
import sys

from gumbel_rag import GumbelReranker, cli
from gumbel_rag.data import mining


def main() -> None:
    """Mine the QA log twice through the real CLI, counting this rank's share of the work."""
    data, corpus, encoder, output = sys.argv[1:5]
    work: dict[str, list[int]] = {"bm25_queries": [], "encoded": []}
    real_bm25, real_encode = mining._bm25, GumbelReranker.encode

    def counting_bm25(docs, queries, top_n):  # type: ignore[no-untyped-def]
        work["bm25_queries"].append(len(queries))
        return real_bm25(docs, queries, top_n)

    def counting_encode(self, texts):  # type: ignore[no-untyped-def]
        work["encoded"].append(len(texts))
        return real_encode(self, texts)

    mining._bm25 = counting_bm25
    GumbelReranker.encode = counting_encode  # type: ignore[method-assign]
    common = ["mine", "--data", data, "--corpus", corpus, "--top-n", "3"]
    assert cli.main([*common, "--output", os.path.join(output, "bm25.jsonl")]) == 0
    dense = ["--retriever", "dense", "--encoder", encoder, "--output", os.path.join(output, "dense.jsonl")]
    assert cli.main([*common, *dense]) == 0
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(output, f"rank{rank}-work.json"), "w", encoding="utf8") as f:
        json.dump(work, f)


if __name__ == "__main__":
    main()
