"""The exact inference path matches stock sentence-transformers; the OpenVINO path matches the exact one."""

from __future__ import annotations

import random

import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from gumbel_rag import GumbelReranker
from gumbel_rag.reranker import _length_buckets
from gumbel_rag.testing import max_relative_error

QUERY = "Which city is the capital of France?"
DOCS = [
    "Paris is the capital and most populous city of France. " * 3,
    "Bananas are yellow.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Berlin is the capital of Germany.",
    "x",
    "",
    "A much longer document about European capitals, rivers, museums and history. " * 12,
]


def _max_diff(a: list[float], b: list[float]) -> float:
    return max_relative_error(a, b)


@pytest.mark.parametrize("batch_size", [32, 2])
def test_length_buckets_partition_all_inputs(batch_size: int) -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(57)]
    for call_cost in (None, 0, 512, 10**9):
        batches = list(_length_buckets(lengths, batch_size, call_cost))
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))
        assert all(1 <= len(b) <= batch_size for b in batches)
        # Longest first within and across batches, so each batch is padded to its first input.
        assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    fixed = list(_length_buckets(lengths, batch_size))
    planned = list(_length_buckets(lengths, batch_size, 512))

    def cost(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) + 512 for b in batches)

    assert cost(planned) <= cost(fixed)
    # No per-call cost: never pad (every batch holds equal lengths only, or single inputs).
    for b in _length_buckets(lengths, batch_size, 0):
        assert len({lengths[i] for i in b}) == 1


def test_exact_bi_encoder_matches_stock(tiny_bi_encoder_dir) -> None:
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, batch_size=3)
    stock = SentenceTransformer(str(tiny_bi_encoder_dir), device="cpu")
    q = stock.encode([QUERY], convert_to_tensor=True)
    d = stock.encode(DOCS, convert_to_tensor=True)
    expected = (torch.nn.functional.cosine_similarity(q, d) / reranker.temperature).tolist()
    assert _max_diff(reranker.score(QUERY, DOCS), expected) < 1e-5
    # The training path scores the same pairs the same way.
    with torch.no_grad():
        train_scores, _ = reranker([QUERY], [DOCS])
    assert _max_diff(train_scores[0].tolist(), expected) < 1e-5


def test_exact_cross_encoder_matches_stock(tiny_cross_encoder_dir) -> None:
    reranker = GumbelReranker.from_pretrained(tiny_cross_encoder_dir, batch_size=3)
    stock = CrossEncoder(str(tiny_cross_encoder_dir), device="cpu")
    expected = stock.predict([(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity())
    assert _max_diff(reranker.score(QUERY, DOCS), [float(x) for x in expected]) < 1e-5


def test_unknown_backend_is_rejected(tiny_bi_encoder_dir) -> None:
    with pytest.raises(ValueError, match="backend"):
        GumbelReranker.from_pretrained(tiny_bi_encoder_dir, backend="tensorrt")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def openvino() -> None:
    pytest.importorskip("openvino", reason="the fast path needs the [fast] extra")


@pytest.mark.parametrize(
    "fixture", ["tiny_bi_encoder_dir", "tiny_cross_encoder_dir", "tiny_two_logit_cross_encoder_dir"]
)
def test_openvino_scores_close_to_exact(openvino, fixture: str, request) -> None:
    path = request.getfixturevalue(fixture)
    exact = GumbelReranker.from_pretrained(path, batch_size=3)
    fast = GumbelReranker.from_pretrained(path, batch_size=3, backend="openvino")
    assert fast.backend == "openvino" and exact.backend == "torch"
    queries = [QUERY, "bananas"]
    want = exact.score_batch(queries, [DOCS, DOCS[::-1]])
    got = fast.score_batch(queries, [DOCS, DOCS[::-1]])
    for g, w in zip(got, want, strict=True):
        assert _max_diff(g, w) < 1e-4
        assert (
            sorted(range(len(g)), key=lambda i: -g[i])[:3] == sorted(range(len(w)), key=lambda i: -w[i])[:3]
        )


def test_openvino_is_inference_only_and_works_with_the_cache(openvino, tiny_bi_encoder_dir) -> None:
    fast = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, backend="openvino", cache_max_entries=100)
    with pytest.raises(RuntimeError, match="inference-only"):
        fast([QUERY], [DOCS])
    first = fast.score(QUERY, DOCS)
    assert fast.score(QUERY, DOCS) == first
    assert fast.embedding_cache is not None and fast.embedding_cache.hits == len(set(DOCS))
    ranked = fast.rerank(QUERY, DOCS, top_k=2)
    assert [r.score for r in ranked] == sorted(first, reverse=True)[:2]


def test_openvino_runs_many_buckets_concurrently_in_input_order(openvino, tiny_bi_encoder_dir) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(3)
    words = ["river", "museum", "album", "city", "film", "war", "county", "player", "born"]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(40)]
    exact = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    fast = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, backend="openvino")
    want = exact.score(QUERY, docs)
    # Small batches: 41 inputs become at least 11 requests on the async queue, finishing out of order.
    assert fast._fast_backbone.max_batch_size <= 4
    assert _max_diff(fast.score(QUERY, docs), want) < 1e-4
    # Each thread gets its own request queue; shared, the callbacks would mix up the threads' outputs.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: fast.score(QUERY, docs[i:] + docs[:i]), range(8)))
    for i, got in enumerate(results):
        assert _max_diff(got, want[i:] + want[:i]) < 1e-4
