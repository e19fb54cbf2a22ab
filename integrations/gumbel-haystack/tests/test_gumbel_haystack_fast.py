"""GumbelRanker's fast-inference options: backend="openvino" and the bi-encoder embedding cache."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import ComponentDevice
from haystack_integrations.components.rankers.gumbel import GumbelRanker

DOCS = [
    Document(id="a", content="Berlin is the capital of Germany.", meta={"title": "Berlin", "n": 1}),
    Document(id="b", content="Paris is the capital of France.", meta={"title": "Paris", "n": 2}),
    Document(id="c", content="The Nile is a river in Africa.", meta={"title": "Nile", "n": 3}),
    Document(id="d", content="Bananas are yellow.", meta={"title": "Banana", "n": 4}),
    # Same content as "a" under another id: one distinct text, two documents.
    Document(id="e", content="Berlin is the capital of Germany.", meta={"title": "Berlin again", "n": 5}),
    Document(id="f", content="Tokyo is the largest city in Japan.", meta={"title": "Tokyo", "n": 6}),
]
DISTINCT_CONTENTS = len({d.content for d in DOCS})
CPU = ComponentDevice.from_str("cpu")


def ranked(ranker: GumbelRanker, query: str, **kwargs: object) -> list[Document]:
    out = ranker.run(query=query, documents=DOCS, top_k=len(DOCS), **kwargs)["documents"]
    # Every document comes out, with its own meta.
    assert sorted(d.id for d in out) == sorted(d.id for d in DOCS)
    by_id = {d.id: d for d in DOCS}
    assert all(d.meta == by_id[d.id].meta and d.content == by_id[d.id].content for d in out)
    return out


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("backend", ["OpenVINO", "", None])
def test_unknown_backend_rejected(backend: object) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        GumbelRanker(backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["cache_max_entries", "cache_max_bytes"])
@pytest.mark.parametrize("value", [0, -1, True, False, 2.5, "10"])
def test_bad_cache_bounds_rejected(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        GumbelRanker(**{name: value})  # type: ignore[arg-type]


def test_valid_settings_are_kept_without_loading_the_model() -> None:
    r = GumbelRanker(backend="openvino", cache_max_entries=5, cache_max_bytes=1 << 20)
    assert (r.backend, r.cache_max_entries, r.cache_max_bytes) == ("openvino", 5, 1 << 20)
    assert r.reranker is None
    # OpenVINO runs on the CPU: device=None means the CPU, not the best available device.
    assert r.device == CPU


def test_openvino_rejects_a_gpu_device() -> None:
    with pytest.raises(ValueError, match="backend='openvino' runs on the CPU"):
        GumbelRanker(backend="openvino", device=ComponentDevice.from_str("cuda:0"))


def test_cross_encoder_with_cache_rejected_at_construction_when_kind_is_given() -> None:
    with pytest.raises(ValueError, match="cache_max_entries / cache_max_bytes need a bi-encoder"):
        GumbelRanker(kind="cross-encoder", cache_max_entries=10)
    with pytest.raises(ValueError, match="cache_max_entries / cache_max_bytes need a bi-encoder"):
        GumbelRanker(kind="cross-encoder", cache_max_bytes=1000)


@pytest.mark.parametrize("bound", [{"cache_max_entries": 10}, {"cache_max_bytes": 1 << 20}])
def test_cross_encoder_with_cache_rejected_at_warm_up_when_kind_is_auto(
    tiny_cross_encoder_dir: Path, bound: dict[str, int]
) -> None:
    # kind="auto": construction cannot know the model is a cross-encoder; loading it raises.
    r = GumbelRanker(model=tiny_cross_encoder_dir, device=CPU, **bound)
    with pytest.raises(ValueError, match="embedding cache needs a bi-encoder"):
        r.warm_up()
    assert r.reranker is None
    with pytest.raises(ValueError, match="embedding cache needs a bi-encoder"):
        r.run(query="q", documents=DOCS)


# ----------------------------------------------------------------------------- the embedding cache


@pytest.mark.parametrize("bound", [{"cache_max_entries": 100}, {"cache_max_bytes": 1 << 20}])
def test_second_run_is_served_from_the_cache(tiny_bi_encoder_dir: Path, bound: dict[str, int]) -> None:
    r = GumbelRanker(model=tiny_bi_encoder_dir, device=CPU, scale_score=False, **bound)
    first = ranked(r, "capital of Germany")
    assert r.reranker is not None
    cache = r.reranker.embedding_cache
    assert cache is not None
    assert (cache.max_entries, cache.max_bytes) == (
        bound.get("cache_max_entries"),
        bound.get("cache_max_bytes"),
    )
    assert (cache.hits, cache.misses) == (0, DISTINCT_CONTENTS)
    assert len(cache) == DISTINCT_CONTENTS and cache.nbytes > 0

    second = ranked(r, "capital of Germany")
    assert cache.hits == DISTINCT_CONTENTS and cache.misses == DISTINCT_CONTENTS
    assert [(d.id, d.score) for d in second] == [(d.id, d.score) for d in first]

    # A new query over the same documents is served from the cache too, and matches an uncached ranker.
    third = ranked(r, "a river in Africa")
    assert cache.hits == 2 * DISTINCT_CONTENTS and cache.misses == DISTINCT_CONTENTS
    plain = GumbelRanker(model=tiny_bi_encoder_dir, device=CPU, scale_score=False)
    expected = ranked(plain, "a river in Africa")
    assert plain.reranker is not None and plain.reranker.embedding_cache is None
    assert [d.id for d in third] == [d.id for d in expected]
    assert [d.score for d in third] == pytest.approx([d.score for d in expected], rel=1e-5, abs=1e-4)


def test_cache_entry_bound_is_respected(tiny_bi_encoder_dir: Path) -> None:
    r = GumbelRanker(model=tiny_bi_encoder_dir, device=CPU, cache_max_entries=2)
    ranked(r, "capital of Germany")
    assert r.reranker is not None and r.reranker.embedding_cache is not None
    assert len(r.reranker.embedding_cache) == 2


def test_no_cache_by_default(tiny_bi_encoder_dir: Path) -> None:
    r = GumbelRanker(model=tiny_bi_encoder_dir, device=CPU)
    r.warm_up()
    assert r.reranker is not None and r.reranker.embedding_cache is None
    assert r.reranker.backend == "torch"


# ----------------------------------------------------------------------------- OpenVINO


@pytest.fixture(scope="module")
def openvino_ranker(tiny_bi_encoder_dir: Path) -> GumbelRanker:
    pytest.importorskip("openvino")
    r = GumbelRanker(model=tiny_bi_encoder_dir, backend="openvino", scale_score=False)
    r.warm_up()
    return r


@pytest.mark.parametrize("query", ["capital of Germany", "a river in Africa", "yellow fruit"])
def test_openvino_scores_equal_torch(
    openvino_ranker: GumbelRanker, tiny_bi_encoder_dir: Path, query: str
) -> None:
    assert openvino_ranker.reranker is not None and openvino_ranker.reranker.backend == "openvino"
    exact = GumbelRanker(model=tiny_bi_encoder_dir, device=CPU, scale_score=False)
    # Raw scores on both sides (scale_score=False): the sigmoid would hide differences where it saturates.
    fast_docs = ranked(openvino_ranker, query)
    exact_docs = ranked(exact, query)
    assert [d.id for d in fast_docs] == [d.id for d in exact_docs]
    assert [d.score for d in fast_docs] == pytest.approx([d.score for d in exact_docs], rel=1e-5, abs=1e-4)
    # The scaled scores (the default) agree too, on the same documents in the same order.
    fast_scaled = ranked(openvino_ranker, query, scale_score=True)
    exact_scaled = ranked(exact, query, scale_score=True)
    assert [d.id for d in fast_scaled] == [d.id for d in exact_scaled]
    assert [d.score for d in fast_scaled] == pytest.approx(
        [d.score for d in exact_scaled], rel=1e-5, abs=1e-4
    )


def test_openvino_cross_encoder_scores_equal_torch(tiny_cross_encoder_dir: Path) -> None:
    pytest.importorskip("openvino")
    fast = GumbelRanker(model=tiny_cross_encoder_dir, backend="openvino", scale_score=False)
    exact = GumbelRanker(model=tiny_cross_encoder_dir, device=CPU, scale_score=False)
    fast_docs = ranked(fast, "capital of Germany")
    exact_docs = ranked(exact, "capital of Germany")
    assert fast.reranker is not None and fast.reranker.backend == "openvino"
    assert fast.reranker.kind == "cross-encoder"
    assert [d.id for d in fast_docs] == [d.id for d in exact_docs]
    assert [d.score for d in fast_docs] == pytest.approx([d.score for d in exact_docs], rel=1e-5, abs=1e-4)


def test_openvino_with_cache(tiny_bi_encoder_dir: Path) -> None:
    pytest.importorskip("openvino")
    r = GumbelRanker(model=tiny_bi_encoder_dir, backend="openvino", cache_max_entries=50, scale_score=False)
    first = ranked(r, "capital of France")
    second = ranked(r, "capital of France")
    assert r.reranker is not None and r.reranker.embedding_cache is not None
    assert r.reranker.backend == "openvino"
    assert r.reranker.embedding_cache.hits == DISTINCT_CONTENTS
    assert [(d.id, d.score) for d in second] == [(d.id, d.score) for d in first]


# ----------------------------------------------------------------------------- serialisation


def test_to_dict_from_dict_keeps_the_settings(tiny_bi_encoder_dir: Path) -> None:
    r = GumbelRanker(
        model=tiny_bi_encoder_dir, backend="openvino", cache_max_entries=123, cache_max_bytes=4567
    )
    data = r.to_dict()
    params = data["init_parameters"]
    assert (params["backend"], params["cache_max_entries"], params["cache_max_bytes"]) == (
        "openvino",
        123,
        4567,
    )
    assert params["device"] == {"type": "single", "device": "cpu"}
    restored = GumbelRanker.from_dict(data)
    assert (restored.backend, restored.cache_max_entries, restored.cache_max_bytes) == ("openvino", 123, 4567)
    assert restored.to_dict() == data

    defaults = GumbelRanker().to_dict()["init_parameters"]
    assert (defaults["backend"], defaults["cache_max_entries"], defaults["cache_max_bytes"]) == (
        "torch",
        None,
        None,
    )


def test_from_dict_validates_the_settings() -> None:
    data = GumbelRanker().to_dict()
    data["init_parameters"]["cache_max_bytes"] = 0
    with pytest.raises(ValueError, match="cache_max_bytes"):
        GumbelRanker.from_dict(data)
    data["init_parameters"]["cache_max_bytes"] = None
    data["init_parameters"]["backend"] = "onnx"
    with pytest.raises(ValueError, match="backend"):
        GumbelRanker.from_dict(data)


def _pipeline(ranker: GumbelRanker) -> Pipeline:
    store = InMemoryDocumentStore(index=f"gumbel-fast-{uuid.uuid4().hex}")
    store.write_documents(DOCS)
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=len(DOCS)))
    pipe.add_component("ranker", ranker)
    pipe.connect("retriever.documents", "ranker.documents")
    return pipe


def _run(pipe: Pipeline, query: str) -> list[Document]:
    """The ranker's documents; checks that every document the retriever passed in comes out, with its meta."""
    out = pipe.run(
        {"retriever": {"query": query}, "ranker": {"query": query, "top_k": len(DOCS)}},
        include_outputs_from={"retriever"},
    )
    retrieved, reranked = out["retriever"]["documents"], out["ranker"]["documents"]
    assert len(retrieved) >= 2
    assert sorted(d.id for d in reranked) == sorted(d.id for d in retrieved)
    by_id = {d.id: d for d in DOCS}
    assert all(d.meta == by_id[d.id].meta and d.content == by_id[d.id].content for d in reranked)
    return reranked


def test_pipeline_yaml_round_trip_keeps_the_settings(tiny_bi_encoder_dir: Path) -> None:
    pipe = _pipeline(
        GumbelRanker(model=tiny_bi_encoder_dir, device=CPU, cache_max_entries=64, cache_max_bytes=1 << 20)
    )
    text = pipe.dumps()
    params = yaml.safe_load(text)["components"]["ranker"]["init_parameters"]
    assert (params["backend"], params["cache_max_entries"], params["cache_max_bytes"]) == (
        "torch",
        64,
        1 << 20,
    )

    restored = Pipeline.loads(text)
    ranker = restored.get_component("ranker")
    assert isinstance(ranker, GumbelRanker)
    assert (ranker.backend, ranker.cache_max_entries, ranker.cache_max_bytes) == ("torch", 64, 1 << 20)
    assert restored.dumps() == text

    # The restored pipeline runs with the cache on: every document retrieved comes out, with its meta.
    query = "capital of Germany"
    first = _run(restored, query)
    distinct = len({d.content for d in first})
    assert distinct < len(first)  # "a" and "e" share their content: one cache entry for both
    assert ranker.reranker is not None and ranker.reranker.embedding_cache is not None
    assert ranker.reranker.embedding_cache.hits == 0
    second = _run(restored, query)
    assert ranker.reranker.embedding_cache.hits == distinct
    assert [(d.id, d.score) for d in second] == [(d.id, d.score) for d in first]


def test_pipeline_yaml_round_trip_openvino(tiny_bi_encoder_dir: Path) -> None:
    pytest.importorskip("openvino")
    pipe = _pipeline(GumbelRanker(model=tiny_bi_encoder_dir, backend="openvino", scale_score=False))
    restored = Pipeline.loads(pipe.dumps())
    ranker = restored.get_component("ranker")
    assert isinstance(ranker, GumbelRanker) and ranker.backend == "openvino"
    _run(restored, "capital of France")
    assert ranker.reranker is not None and ranker.reranker.backend == "openvino"
