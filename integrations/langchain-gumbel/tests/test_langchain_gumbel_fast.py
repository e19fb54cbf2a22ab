"""GumbelRerank's fast-inference options: the OpenVINO backend and the document-embedding cache."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_gumbel import GumbelRerank
from pydantic import ValidationError

QUERY = "What is the capital of France?"


def with_duplicate(corpus: list[Document]) -> list[Document]:
    """The corpus plus a second document with the text of the first (another id and metadata)."""
    twin = Document(corpus[0].page_content, id="paris-copy", metadata={"source": "mirror/Paris"})
    return [*corpus, twin]


def scores_by_id(docs: list[Document]) -> dict[str, float]:
    return {doc.id: doc.metadata["relevance_score"] for doc in docs}  # type: ignore[misc]


def assert_documents_kept(out: list[Document], inputs: list[Document]) -> None:
    """Every input comes back once, as a copy with its text, id and metadata, plus a float score."""
    assert sorted(d.id for d in out) == sorted(d.id for d in inputs)  # type: ignore[type-var]
    by_id = {d.id: d for d in inputs}
    for doc in out:
        original = by_id[doc.id]
        assert doc is not original
        assert doc.page_content == original.page_content
        assert {k: v for k, v in doc.metadata.items() if k != "relevance_score"} == original.metadata
        assert isinstance(doc.metadata["relevance_score"], float)
    assert all("relevance_score" not in d.metadata for d in inputs)


# ---------------------------------------------------------------- fields


def test_defaults_are_the_exact_uncached_path(tiny_bi_encoder_dir: Path) -> None:
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir))
    assert (rerank.backend, rerank.cache_max_entries, rerank.cache_max_bytes) == ("torch", None, None)
    assert rerank.reranker.backend == "torch"
    assert rerank.reranker.embedding_cache is None


@pytest.mark.parametrize("field", ["cache_max_entries", "cache_max_bytes"])
@pytest.mark.parametrize("value", [0, -1, True])
def test_cache_bounds_must_be_positive_integers(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=f"{field} must be a positive integer or None"):
        GumbelRerank(**{field: value})
    rerank = GumbelRerank(**{field: 5})
    assert getattr(rerank, field) == 5
    with pytest.raises(ValidationError, match=f"{field} must be a positive integer or None"):
        setattr(rerank, field, value)
    assert getattr(rerank, field) == 5
    setattr(rerank, field, None)
    assert getattr(rerank, field) is None


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValidationError, match="backend"):
        GumbelRerank(backend="onnx")  # type: ignore[arg-type]


# ---------------------------------------------------------------- embedding cache


def test_cache_max_entries_serves_repeated_documents_from_the_cache(
    tiny_bi_encoder_dir: Path, corpus: list[Document]
) -> None:
    docs = with_duplicate(corpus)
    distinct = len({d.page_content for d in docs})
    assert distinct == len(docs) - 1
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu", top_n=None, cache_max_entries=100)
    cache = rerank.reranker.embedding_cache
    assert cache is not None and (cache.max_entries, cache.max_bytes) == (100, None)

    first = list(rerank.compress_documents(docs, QUERY))
    assert (cache.hits, cache.misses, len(cache)) == (0, distinct, distinct)
    assert cache.nbytes > 0
    second = list(rerank.compress_documents(docs, QUERY))
    assert (cache.hits, cache.misses, len(cache)) == (distinct, distinct, distinct)
    assert rerank.reranker.embedding_cache is cache  # same model, same cache: no reload

    assert [d.id for d in second] == [d.id for d in first]
    assert scores_by_id(second) == scores_by_id(first)
    assert_documents_kept(second, docs)
    # The duplicated text scores the same under both ids.
    assert scores_by_id(second)["paris"] == scores_by_id(second)["paris-copy"]


def test_cached_scores_equal_the_uncached_ones(tiny_bi_encoder_dir: Path, corpus: list[Document]) -> None:
    plain = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu", top_n=None)
    cached = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu", top_n=None, cache_max_entries=100)
    expected = scores_by_id(list(plain.compress_documents(corpus, QUERY)))
    cached.compress_documents(corpus, QUERY)
    got = scores_by_id(list(cached.compress_documents(corpus, QUERY)))
    assert cached.reranker.embedding_cache is not None and cached.reranker.embedding_cache.hits == len(corpus)
    assert got.keys() == expected.keys()
    for doc_id, score in expected.items():
        assert got[doc_id] == pytest.approx(score, rel=1e-5, abs=1e-5)


def test_cache_max_bytes_bounds_the_cache(tiny_bi_encoder_dir: Path, corpus: list[Document]) -> None:
    roomy = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu", top_n=None, cache_max_bytes=10**6)
    cache = roomy.reranker.embedding_cache
    assert cache is not None and (cache.max_entries, cache.max_bytes) == (None, 10**6)
    roomy.compress_documents(corpus, QUERY)
    roomy.compress_documents(corpus, QUERY)
    assert (cache.hits, len(cache)) == (len(corpus), len(corpus))

    # A bound below one entry's size: nothing fits, so every call embeds every document again.
    tight_bound = cache.nbytes // len(corpus) // 2
    tight = roomy.model_copy(update={"cache_max_bytes": tight_bound})
    out = list(tight.compress_documents(corpus, QUERY))
    out = list(tight.compress_documents(corpus, QUERY))
    small = tight.reranker.embedding_cache
    assert small is not None and small is not cache and small.max_bytes == tight_bound
    assert (small.hits, small.misses, len(small), small.nbytes) == (0, 2 * len(corpus), 0, 0)
    assert_documents_kept(out, corpus)


@pytest.mark.parametrize("field", ["cache_max_entries", "cache_max_bytes"])
def test_cross_encoder_with_a_cache_bound_raises(tiny_cross_encoder_dir: Path, field: str) -> None:
    rerank = GumbelRerank(model=str(tiny_cross_encoder_dir), **{field: 10})
    with pytest.raises(ValueError, match="cache"):
        rerank.compress_documents([Document("a", id="1")], QUERY)
    # Without the bound the same model loads and ranks.
    setattr(rerank, field, None)
    out = rerank.compress_documents([Document("a", id="1", metadata={"k": 1})], QUERY)
    assert rerank.reranker.kind == "cross-encoder"
    assert [(d.id, d.metadata["k"]) for d in out] == [("1", 1)]


def test_changing_a_cache_bound_reloads(tiny_bi_encoder_dir: Path) -> None:
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu")
    first = rerank.reranker
    assert rerank.reranker is first
    rerank.cache_max_entries = 10
    second = rerank.reranker
    assert second is not first and second.embedding_cache is not None
    assert second.embedding_cache.max_entries == 10
    rerank.cache_max_bytes = 10**6
    third = rerank.reranker
    assert third is not second and third.embedding_cache is not None
    assert (third.embedding_cache.max_entries, third.embedding_cache.max_bytes) == (10, 10**6)


def test_cached_compressor_can_be_deep_copied(tiny_bi_encoder_dir: Path, corpus: list[Document]) -> None:
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu", top_n=None, cache_max_entries=10)
    expected = scores_by_id(list(rerank.compress_documents(corpus, QUERY)))
    original = rerank.reranker
    clone = copy.deepcopy(rerank)
    assert clone.cache_max_entries == 10 and rerank.reranker is original
    got = scores_by_id(list(clone.compress_documents(corpus, QUERY)))
    assert clone.reranker is not original and clone.reranker.embedding_cache is not original.embedding_cache
    for doc_id, score in expected.items():
        assert got[doc_id] == pytest.approx(score, rel=1e-5, abs=1e-5)


# ---------------------------------------------------------------- OpenVINO backend


def test_openvino_scores_match_torch(tiny_bi_encoder_dir: Path, corpus: list[Document]) -> None:
    pytest.importorskip("openvino")
    exact = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu", top_n=None)
    fast = exact.model_copy(update={"backend": "openvino"})
    expected = list(exact.compress_documents(corpus, QUERY))
    got = list(fast.compress_documents(corpus, QUERY))
    assert exact.reranker.backend == "torch"
    assert fast.reranker.backend == "openvino"
    assert fast.reranker is not exact.reranker

    want = [d.metadata["relevance_score"] for d in expected]
    # The order is only meaningful if the exact scores are further apart than the tolerance.
    assert min(a - b for a, b in itertools.pairwise(want)) > 1e-3
    assert [d.id for d in got] == [d.id for d in expected]
    assert [d.metadata["relevance_score"] for d in got] == pytest.approx(want, rel=1e-5, abs=1e-4)
    assert_documents_kept(got, corpus)


def test_openvino_with_the_cache(tiny_bi_encoder_dir: Path, corpus: list[Document]) -> None:
    pytest.importorskip("openvino")
    exact = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu", top_n=2)
    fast = GumbelRerank(
        model=str(tiny_bi_encoder_dir), device="cpu", top_n=2, backend="openvino", cache_max_entries=100
    )
    expected = list(exact.compress_documents(corpus, QUERY))
    first = list(fast.compress_documents(corpus, QUERY))
    second = list(fast.compress_documents(corpus, QUERY))
    cache = fast.reranker.embedding_cache
    assert fast.reranker.backend == "openvino"
    assert cache is not None and (cache.hits, cache.misses) == (len(corpus), len(corpus))
    assert scores_by_id(second) == scores_by_id(first)
    assert [d.id for d in second] == [d.id for d in expected]
    for doc_id, score in scores_by_id(expected).items():
        assert scores_by_id(second)[doc_id] == pytest.approx(score, rel=1e-5, abs=1e-4)


def test_changing_backend_reloads(tiny_bi_encoder_dir: Path, corpus: list[Document]) -> None:
    pytest.importorskip("openvino")
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu", top_n=None)
    first = rerank.reranker
    expected = scores_by_id(list(rerank.compress_documents(corpus, QUERY)))
    rerank.backend = "openvino"
    fast = rerank.reranker
    assert fast is not first and fast.backend == "openvino"
    assert rerank.reranker is fast  # loaded once
    got = scores_by_id(list(rerank.compress_documents(corpus, QUERY)))
    for doc_id, score in expected.items():
        assert got[doc_id] == pytest.approx(score, rel=1e-5, abs=1e-4)
    rerank.backend = "torch"
    assert rerank.reranker is not fast and rerank.reranker.backend == "torch"


def test_openvino_compressor_can_be_deep_copied(tiny_bi_encoder_dir: Path, corpus: list[Document]) -> None:
    pytest.importorskip("openvino")
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu", top_n=None, backend="openvino")
    expected = scores_by_id(list(rerank.compress_documents(corpus, QUERY)))
    clone = copy.deepcopy(rerank)
    got = scores_by_id(list(clone.compress_documents(corpus, QUERY)))
    assert clone.reranker.backend == "openvino" and clone.reranker is not rerank.reranker
    for doc_id, score in expected.items():
        assert got[doc_id] == pytest.approx(score, rel=1e-5, abs=1e-5)
