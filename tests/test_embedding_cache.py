"""The bi-encoder document-embedding cache: bounds, eviction order, and scores identical to no cache."""

from __future__ import annotations

import threading

import pytest
import torch

from gumbel_rag import GumbelReranker
from gumbel_rag.embedding_cache import EmbeddingCache, entry_bytes
from gumbel_rag.testing import max_relative_error


def _emb(i: int, dim: int = 4) -> torch.Tensor:
    return torch.full((dim,), float(i))


def test_entry_bound_evicts_least_recently_used_first() -> None:
    cache = EmbeddingCache(max_entries=3)
    cache.put_many(["a", "b", "c"], [_emb(1), _emb(2), _emb(3)])
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("d", _emb(4))
    assert len(cache) == 3
    assert cache.texts() == ["c", "a", "d"]  # "b" was the least recently used
    assert cache.get("b") is None
    cache.put("e", _emb(5))
    assert cache.texts() == ["a", "d", "e"]
    assert torch.equal(cache.get("a"), _emb(1))


def test_byte_bound_is_never_exceeded_and_oversized_entries_are_skipped() -> None:
    one = entry_bytes("doc-00", _emb(0, dim=16))
    cache = EmbeddingCache(max_bytes=3 * one + one // 2)
    for i in range(10):
        cache.put(f"doc-{i:02d}", _emb(i, dim=16))
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 3
    assert cache.texts() == ["doc-07", "doc-08", "doc-09"]
    assert cache.nbytes == 3 * one
    cache.put("huge", torch.zeros(10_000))
    assert "huge" not in cache
    assert len(cache) == 3


def test_reinserting_a_key_does_not_double_count_bytes() -> None:
    cache = EmbeddingCache(max_entries=5)
    cache.put("a", _emb(1))
    before = cache.nbytes
    cache.put("a", _emb(2))
    assert cache.nbytes == before and len(cache) == 1
    assert torch.equal(cache.get("a"), _emb(2))


def test_stored_rows_do_not_keep_the_batch_alive() -> None:
    batch = torch.randn(64, 8)
    cache = EmbeddingCache(max_entries=2)
    cache.put_many(["a", "b"], list(batch[:2]))
    stored = cache.get("a")
    assert stored.untyped_storage().nbytes() == 8 * 4  # a copy of the row, not a view of the batch
    batch.zero_()
    assert stored.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "set max_entries and/or max_bytes"),
        ({"max_entries": 0}, "max_entries must be a positive integer or None"),
        ({"max_bytes": 0}, "max_bytes must be a positive integer or None"),
        # True is an int to Python; 2.5 would be truncated by int(): both are refused, named.
        ({"max_entries": True}, r"max_entries .* got True"),
        ({"max_bytes": 2.5}, r"max_bytes .* got 2.5"),
    ],
)
def test_invalid_bounds_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddingCache(**kwargs)


def test_fingerprint_change_empties_the_cache() -> None:
    cache = EmbeddingCache(max_entries=4)
    cache.check_fingerprint("v1")
    cache.put("a", _emb(1))
    cache.check_fingerprint("v1")
    assert "a" in cache
    cache.check_fingerprint("v2")
    assert len(cache) == 0 and cache.nbytes == 0


def test_concurrent_puts_respect_the_bound() -> None:
    cache = EmbeddingCache(max_entries=50)

    def work(t: int) -> None:
        for i in range(200):
            cache.put(f"{t}-{i}", _emb(i))
            cache.get(f"{t}-{i // 2}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(cache) == 50
    assert cache.nbytes == sum(entry_bytes(k, _emb(0)) for k in cache.texts())


DOCS = [
    "Paris is the capital of France.",
    "Bananas are yellow.",
    "The Eiffel Tower is in Paris.",
    "Berlin is the capital of Germany.",
]


def test_cache_hits_return_identical_scores(tiny_bi_encoder_dir) -> None:
    plain = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    cached = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, cache_max_entries=100)
    cache = cached.embedding_cache
    assert cache is not None
    expected = plain.score("capital of France", DOCS)
    first = cached.score("capital of France", DOCS)
    assert cache.misses == len(DOCS) and cache.hits == 0
    second = cached.score("capital of France", DOCS)
    assert cache.hits == len(DOCS)
    assert second == first
    assert max_relative_error(first, expected) < 1e-5
    # Mixed hits and misses, repeated documents and several queries in one batch.
    batch = [[*DOCS[:2], "A new document about Rome."], [DOCS[3], DOCS[3], "Another new one."]]
    got = cached.score_batch(["q one", "q two"], batch)
    want = plain.score_batch(["q one", "q two"], batch)
    assert got[1][0] == got[1][1]
    for g, w in zip(got, want, strict=True):
        assert max_relative_error(g, w) < 1e-5


def test_cache_is_bounded_inside_the_reranker(tiny_bi_encoder_dir) -> None:
    cached = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, cache_max_entries=3)
    cached.score("q", DOCS)
    assert cached.embedding_cache is not None and len(cached.embedding_cache) == 3
    bytes_bound = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, cache_max_bytes=1000)
    bytes_bound.score("q", DOCS)
    assert bytes_bound.embedding_cache is not None and 0 < bytes_bound.embedding_cache.nbytes <= 1000


def test_training_step_invalidates_cached_embeddings(tiny_bi_encoder_dir) -> None:
    cached = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, cache_max_entries=100)
    before = cached.score("capital of France", DOCS)
    with torch.no_grad():  # an optimizer step writes the parameters in place, like this
        for p in cached.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = cached.score("capital of France", DOCS)
    fresh = GumbelReranker(cached.model, temperature=cached.temperature).eval()
    assert after != before
    assert max_relative_error(after, fresh.score("capital of France", DOCS)) < 1e-5


def test_cross_encoders_refuse_a_cache(tiny_cross_encoder_dir) -> None:
    with pytest.raises(ValueError, match="bi-encoder"):
        GumbelReranker.from_pretrained(tiny_cross_encoder_dir, cache_max_entries=10)
