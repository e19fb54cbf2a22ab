"""GumbelRerank's fast-inference options: backend="openvino" and the document-embedding cache."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.postprocessor.gumbel_rerank import GumbelRerank, node_text

QUERY = "Which city is the capital of France?"

# (text, metadata): the last two share text and metadata, so they are one scored text (one cache entry).
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("Bananas are a tropical fruit rich in potassium.", {"title": "Banana", "page": 1}),
    ("Paris is the capital and largest city of France.", {"title": "Paris", "topic": "geo"}),
    ("Mount Everest is Earth's highest mountain.", {"title": "Everest"}),
    ("", {"title": "Orphan"}),  # no text: scored as empty text, still returned
    ("Berlin is the capital of Germany.", {"title": "Berlin", "topic": "geo"}),
    ("Berlin is the capital of Germany.", {"title": "Berlin", "topic": "geo"}),
]


def make_nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=text, metadata=dict(meta), id_=f"n{i}"), score=1.0 - i / 100)
        for i, (text, meta) in enumerate(ROWS)
    ]


def distinct_texts(nodes: list[NodeWithScore]) -> int:
    return len({node_text(n.node, MetadataMode.EMBED) for n in nodes})


def check_every_node_returned(out: list[NodeWithScore], nodes: list[NodeWithScore]) -> None:
    """All nodes come back once, best first, with their own text and metadata."""
    by_id = {n.node.node_id: n.node for n in nodes}
    assert sorted(item.node.node_id for item in out) == sorted(by_id)
    for item in out:
        original = by_id[item.node.node_id]
        assert item.node.metadata == original.metadata
        assert item.node.get_content(MetadataMode.NONE) == original.get_content(MetadataMode.NONE)
    scores = [item.score for item in out]
    assert scores == sorted(scores, reverse=True)


def scores_by_id(out: list[NodeWithScore]) -> dict[str, float]:
    return {item.node.node_id: item.score for item in out}


def check_scores_match(out: list[NodeWithScore], reference: list[NodeWithScore]) -> None:
    """Every node's score in ``out`` is within 1e-4 of its score in ``reference``."""
    expected = scores_by_id(reference)
    for node_id, score in scores_by_id(out).items():
        assert score == pytest.approx(expected[node_id], rel=1e-5, abs=1e-4)


@pytest.fixture(scope="module")
def torch_out(tiny_bi_encoder_dir: Path) -> list[NodeWithScore]:
    """The exact path's ranking of make_nodes() (no cache)."""
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=None, device="cpu")
    assert rerank.reranker.backend == "torch" and rerank.reranker.embedding_cache is None
    return rerank.postprocess_nodes(make_nodes(), query_str=QUERY)


# ---------------------------------------------------------------- options and validation


def test_defaults_and_serialization_round_trip() -> None:
    default = GumbelRerank()
    assert (default.backend, default.cache_max_entries, default.cache_max_bytes) == ("torch", None, None)
    rerank = GumbelRerank(backend="openvino", cache_max_entries=100, cache_max_bytes=2**20)
    data = rerank.to_dict()
    assert (data["backend"], data["cache_max_entries"], data["cache_max_bytes"]) == ("openvino", 100, 2**20)
    clone = GumbelRerank.from_dict(data)
    assert (clone.backend, clone.cache_max_entries, clone.cache_max_bytes) == ("openvino", 100, 2**20)
    assert GumbelRerank.from_json(rerank.to_json()).cache_max_bytes == 2**20


@pytest.mark.parametrize("field", ["cache_max_entries", "cache_max_bytes"])
@pytest.mark.parametrize("value", [0, -1, True, False])
def test_invalid_cache_bounds_are_rejected_at_construction(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a positive integer or None"):
        GumbelRerank(**{field: value})


def test_unknown_backend_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="backend"):
        GumbelRerank(backend="onnx")


def test_cross_encoder_with_a_cache_bound_raises(tiny_cross_encoder_dir: Path) -> None:
    for bound in ({"cache_max_entries": 10}, {"cache_max_bytes": 2**20}):
        rerank = GumbelRerank(model=tiny_cross_encoder_dir, device="cpu", **bound)
        with pytest.raises(ValueError, match="cache"):
            rerank.postprocess_nodes(make_nodes(), query_str=QUERY)
    # Without a bound the same cross-encoder works.
    plain = GumbelRerank(model=tiny_cross_encoder_dir, device="cpu", top_n=None)
    check_every_node_returned(plain.postprocess_nodes(make_nodes(), query_str=QUERY), make_nodes())


# ---------------------------------------------------------------- document-embedding cache


def test_cache_serves_the_second_call_with_identical_scores(
    tiny_bi_encoder_dir: Path, torch_out: list[NodeWithScore]
) -> None:
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=None, device="cpu", cache_max_entries=16)
    cache = rerank.reranker.embedding_cache
    assert cache is not None and cache.max_entries == 16 and cache.max_bytes is None
    nodes = make_nodes()
    n_texts = distinct_texts(nodes)
    assert n_texts == len(nodes) - 1  # the duplicated node is one text

    first = rerank.postprocess_nodes(nodes, query_str=QUERY)
    assert (cache.hits, cache.misses, len(cache)) == (0, n_texts, n_texts)
    second = rerank.postprocess_nodes(make_nodes(), query_str=QUERY)
    assert (cache.hits, cache.misses, len(cache)) == (n_texts, n_texts, n_texts)
    assert rerank.reranker.embedding_cache is cache  # no reload between calls

    check_every_node_returned(first, nodes)
    check_every_node_returned(second, nodes)
    assert [i.node.node_id for i in second] == [i.node.node_id for i in first]
    # Documents come back bit for bit from the cache; the query is embedded again, in a batch of a
    # different shape than on the first call, so scores may move by float rounding only.
    assert [i.score for i in second] == pytest.approx([i.score for i in first], rel=1e-5, abs=1e-5)
    # The cache changes where embeddings come from, not the scores.
    exact = scores_by_id(torch_out)
    for node_id, score in scores_by_id(second).items():
        assert score == pytest.approx(exact[node_id], rel=1e-5, abs=1e-4)


def test_cache_byte_bound_is_respected(tiny_bi_encoder_dir: Path) -> None:
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=2, device="cpu", cache_max_bytes=10**6)
    cache = rerank.reranker.embedding_cache
    assert cache is not None and cache.max_bytes == 10**6 and cache.max_entries is None
    out = rerank.postprocess_nodes(make_nodes(), query_str=QUERY)
    assert len(out) == 2
    assert len(cache) == distinct_texts(make_nodes()) and 0 < cache.nbytes <= 10**6


def test_async_path_uses_the_same_cache(tiny_bi_encoder_dir: Path) -> None:
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=None, device="cpu", cache_max_entries=16)
    sync = rerank.postprocess_nodes(make_nodes(), query_str=QUERY)
    cache = rerank.reranker.embedding_cache
    assert cache is not None
    hits = cache.hits
    out = asyncio.run(rerank.apostprocess_nodes(make_nodes(), query_str=QUERY))
    assert cache.hits == hits + distinct_texts(make_nodes())
    check_every_node_returned(out, make_nodes())
    assert scores_by_id(out) == pytest.approx(scores_by_id(sync), rel=1e-5, abs=1e-5)


# ---------------------------------------------------------------- OpenVINO backend


def test_openvino_scores_match_torch(tiny_bi_encoder_dir: Path, torch_out: list[NodeWithScore]) -> None:
    pytest.importorskip("openvino")
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=None, device="cpu", backend="openvino")
    assert rerank.reranker.backend == "openvino"
    nodes = make_nodes()
    out = rerank.postprocess_nodes(nodes, query_str=QUERY)
    check_every_node_returned(out, nodes)
    # Same order wherever the exact scores are not (near-)tied; equal scores within 1e-4.
    exact = [i.score for i in torch_out]
    assert all(a - b > 1e-3 or a == b for a, b in itertools.pairwise(exact))
    assert [i.node.node_id for i in out if i.node.node_id != "n5"] == [
        i.node.node_id for i in torch_out if i.node.node_id != "n5"
    ]  # n4 and n5 have the same text and score: their relative order is not part of the contract
    check_scores_match(out, torch_out)


def test_openvino_cross_encoder_scores_match_torch(tiny_cross_encoder_dir: Path) -> None:
    pytest.importorskip("openvino")
    exact = GumbelRerank(model=tiny_cross_encoder_dir, top_n=None, device="cpu")
    fast = exact.model_copy(update={"backend": "openvino"})
    exact_out = exact.postprocess_nodes(make_nodes(), query_str=QUERY)
    fast_out = fast.postprocess_nodes(make_nodes(), query_str=QUERY)
    assert exact.reranker.backend == "torch" and fast.reranker.backend == "openvino"
    check_every_node_returned(fast_out, make_nodes())
    check_scores_match(fast_out, exact_out)


def test_openvino_with_cache(tiny_bi_encoder_dir: Path, torch_out: list[NodeWithScore]) -> None:
    pytest.importorskip("openvino")
    rerank = GumbelRerank(
        model=tiny_bi_encoder_dir, top_n=None, device="cpu", backend="openvino", cache_max_entries=16
    )
    first = rerank.postprocess_nodes(make_nodes(), query_str=QUERY)
    second = rerank.postprocess_nodes(make_nodes(), query_str=QUERY)
    cache = rerank.reranker.embedding_cache
    assert rerank.reranker.backend == "openvino" and cache is not None
    assert cache.hits == distinct_texts(make_nodes())
    assert scores_by_id(second) == pytest.approx(scores_by_id(first), rel=1e-5, abs=1e-5)
    check_scores_match(second, torch_out)


# ---------------------------------------------------------------- reloading


def test_changing_fast_options_reloads_the_model(tiny_bi_encoder_dir: Path) -> None:
    pytest.importorskip("openvino")
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=None, device="cpu")
    first = rerank.reranker
    assert rerank.reranker is first and first.backend == "torch"  # no spurious reload

    rerank.backend = "openvino"
    fast = rerank.reranker
    assert fast is not first and fast.backend == "openvino"
    assert rerank.reranker is fast

    rerank.cache_max_entries = 8
    cached = rerank.reranker
    assert cached is not fast and cached.backend == "openvino"
    assert cached.embedding_cache is not None and cached.embedding_cache.max_entries == 8

    rerank.cache_max_bytes = 4096
    bounded = rerank.reranker
    assert bounded is not cached and bounded.embedding_cache is not None
    assert (bounded.embedding_cache.max_entries, bounded.embedding_cache.max_bytes) == (8, 4096)

    rerank.backend, rerank.cache_max_entries, rerank.cache_max_bytes = "torch", None, None
    back = rerank.reranker
    assert back is not bounded and back.backend == "torch" and back.embedding_cache is None
    check_every_node_returned(rerank.postprocess_nodes(make_nodes(), query_str=QUERY), make_nodes())


def test_changing_cache_bound_reloads_without_openvino(tiny_bi_encoder_dir: Path) -> None:
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, device="cpu", cache_max_entries=4)
    first = rerank.reranker
    assert first.embedding_cache is not None and first.embedding_cache.max_entries == 4
    copy = rerank.model_copy(update={"cache_max_entries": 32})
    assert copy.reranker is not first and copy.reranker.embedding_cache.max_entries == 32
    assert rerank.reranker is first  # the original keeps its model
