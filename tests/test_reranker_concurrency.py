"""One GumbelReranker instance shared by threads and asyncio tasks gives the serial results."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gumbel_rag import GumbelReranker

QUERIES = [f"query number {i} about topic {i % 3}" for i in range(16)]
DOCS = [[f"document {j} on topic {(i + j) % 3} " * (1 + j % 4) for j in range(6)] for i in range(16)]


@pytest.fixture(scope="module")
def reranker(tiny_bi_encoder_dir: Path) -> GumbelReranker:
    return GumbelReranker.from_pretrained(tiny_bi_encoder_dir, batch_size=4)


def test_eight_threads_match_serial_calls(reranker: GumbelReranker) -> None:
    serial = [reranker.rerank(q, d) for q, d in zip(QUERIES, DOCS, strict=True)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(reranker.rerank, QUERIES, DOCS))
    for a, b in zip(serial, threaded, strict=True):
        assert [r.index for r in a] == [r.index for r in b]
        assert [r.score for r in a] == pytest.approx([r.score for r in b], rel=1e-5, abs=1e-5)


def test_asyncio_tasks_match_serial_calls(reranker: GumbelReranker) -> None:
    serial = [reranker.score(q, d) for q, d in zip(QUERIES, DOCS, strict=True)]

    async def run_all() -> list[list[float]]:
        return await asyncio.gather(
            *(asyncio.to_thread(reranker.score, q, d) for q, d in zip(QUERIES, DOCS, strict=True))
        )

    concurrent = asyncio.run(run_all())
    for a, b in zip(serial, concurrent, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
