"""GumbelRanker mechanics with tiny random models (fast) and real Haystack classes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from haystack import Document
from haystack.core.errors import DeserializationError
from haystack.utils import ComponentDevice, Device, DeviceMap
from haystack_integrations.components.rankers.gumbel import GumbelRanker, document_text

from gumbel_rag import GumbelReranker
from gumbel_rag.errors import ModelLoadError

DOCS = [
    Document(id="a", content="Berlin is the capital of Germany.", meta={"title": "Berlin", "n": 1}),
    Document(id="b", content="Paris is the capital of France.", meta={"title": "Paris", "n": 2}),
    Document(id="c", content="The Nile is a river in Africa.", meta={"title": "Nile", "n": 3}),
    Document(id="d", content="Bananas are yellow.", meta={"title": "Banana", "n": 4}),
]


@pytest.fixture(scope="module")
def ranker(tiny_bi_encoder_dir: Path) -> GumbelRanker:
    r = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"), top_k=10)
    r.warm_up()
    return r


def raw_scores(ranker: GumbelRanker, query: str, texts: list[str]) -> list[float]:
    assert ranker.reranker is not None
    return ranker.reranker.score(query, texts)


# ----------------------------------------------------------------------------- construction


@pytest.mark.parametrize("top_k", [0, -1, -10])
def test_non_positive_top_k_rejected_at_construction(top_k: int) -> None:
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        GumbelRanker(top_k=top_k)


@pytest.mark.parametrize("top_k", ["3", 2.5, True])
def test_non_integer_top_k_rejected(top_k: object) -> None:
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        GumbelRanker(top_k=top_k)  # type: ignore[arg-type]


def test_other_bad_init_values_rejected() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        GumbelRanker(batch_size=0)
    with pytest.raises(ValueError, match="kind"):
        GumbelRanker(kind="colbert")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        GumbelRanker(max_length=0)
    device_map = ComponentDevice.from_multiple(DeviceMap({"a": Device.cpu(), "b": Device.cpu()}))
    with pytest.raises(ValueError, match="device maps"):
        GumbelRanker(device=device_map)


def test_construction_does_not_load_the_model() -> None:
    # A missing directory only fails when the model is loaded, as with Haystack's own rankers.
    r = GumbelRanker(model="/nonexistent/model/dir")
    assert r.reranker is None
    with pytest.raises(ModelLoadError, match="nonexistent"):
        r.warm_up()


@pytest.mark.parametrize("top_k", [0, -3])
def test_non_positive_top_k_rejected_in_run(ranker: GumbelRanker, top_k: int) -> None:
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        ranker.run(query="q", documents=DOCS, top_k=top_k)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        ranker.run(query="q", documents=[], top_k=top_k)


def test_bad_run_inputs_are_named(ranker: GumbelRanker) -> None:
    with pytest.raises(TypeError, match=r"documents\[1\] is str"):
        ranker.run(query="q", documents=[DOCS[0], "plain text"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="query must be a string"):
        ranker.run(query=None, documents=DOCS)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- warm-up and loading


def test_warm_up_is_idempotent(tiny_bi_encoder_dir: Path) -> None:
    r = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"))
    assert r.reranker is None
    r.warm_up()
    first = r.reranker
    assert isinstance(first, GumbelReranker)
    r.warm_up()
    r.run(query="q", documents=DOCS)
    assert r.reranker is first


def test_empty_documents_return_empty_without_loading(tiny_bi_encoder_dir: Path) -> None:
    r = GumbelRanker(model=tiny_bi_encoder_dir)
    assert r.run(query="anything", documents=[]) == {"documents": []}
    assert r.reranker is None


def test_fine_tuned_directory_is_accepted(tiny_bi_encoder_dir: Path) -> None:
    r = GumbelRanker(model=str(tiny_bi_encoder_dir), device=ComponentDevice.from_str("cpu"))
    out = r.run(query="capital of Germany", documents=DOCS)["documents"]
    assert r.reranker is not None and r.reranker.kind == "bi-encoder"
    assert sorted(d.id for d in out) == ["a", "b", "c", "d"]
    # Same numbers as the core reranker loaded from that directory.
    core = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, device="cpu")
    expected = core.score("capital of Germany", [d.content for d in DOCS])
    by_id = {d.id: d.score for d in out}
    for doc, raw in zip(DOCS, expected, strict=True):
        # scale_score=True: a bi-encoder's cosine mapped to [0, 1] (raw = cosine / temperature).
        assert by_id[doc.id] == pytest.approx((raw * core.temperature + 1) / 2, rel=1e-5)


def test_cross_encoder_directory_is_accepted(tiny_two_logit_cross_encoder_dir: Path) -> None:
    r = GumbelRanker(model=tiny_two_logit_cross_encoder_dir, device=ComponentDevice.from_str("cpu"))
    out = r.run(query="capital", documents=DOCS, scale_score=False)["documents"]
    assert r.reranker is not None and r.reranker.kind == "cross-encoder"
    scores = [d.score for d in out]
    assert len(out) == 4 and scores == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="looks like a cross-encoder"):
        GumbelRanker(model=tiny_two_logit_cross_encoder_dir, kind="bi-encoder").warm_up()


# ----------------------------------------------------------------------------- ranking contract


def test_scores_sorted_and_scaled_to_the_unit_interval(ranker: GumbelRanker) -> None:
    raw = ranker.run(query="capital of Germany", documents=DOCS, scale_score=False)["documents"]
    scaled = ranker.run(query="capital of Germany", documents=DOCS, scale_score=True)["documents"]
    assert [d.id for d in raw] == [d.id for d in scaled]
    assert [d.score for d in raw] == sorted((d.score for d in raw), reverse=True)
    for r, s in zip(raw, scaled, strict=True):
        assert s.score == pytest.approx((r.score * ranker.reranker.temperature + 1) / 2, rel=1e-6)
        assert 0.0 <= s.score <= 1.0
    expected = raw_scores(ranker, "capital of Germany", [d.content for d in DOCS])
    assert sorted(expected, reverse=True) == pytest.approx([d.score for d in raw])


def test_top_k_and_threshold(ranker: GumbelRanker) -> None:
    full = ranker.run(query="river", documents=DOCS, scale_score=False)["documents"]
    top2 = ranker.run(query="river", documents=DOCS, scale_score=False, top_k=2)["documents"]
    assert [d.id for d in top2] == [d.id for d in full[:2]]
    cut = (full[1].score + full[2].score) / 2
    kept = ranker.run(query="river", documents=DOCS, scale_score=False, score_threshold=cut)["documents"]
    assert [d.id for d in kept] == [d.id for d in full[:2]]
    # A threshold equal to a score keeps that document (>=).
    kept = ranker.run(query="river", documents=DOCS, scale_score=False, score_threshold=full[2].score)
    assert [d.id for d in kept["documents"]] == [d.id for d in full[:3]]
    # The init value applies when run() does not override it.
    r = GumbelRanker(model=ranker.model, top_k=1, scale_score=False, device=ComponentDevice.from_str("cpu"))
    r._lazy = ranker._lazy  # share the loaded model; only the settings differ
    assert [d.id for d in r.run(query="river", documents=DOCS)["documents"]] == [full[0].id]


def test_ties_keep_input_order(ranker: GumbelRanker) -> None:
    same = [Document(id=f"t{i}", content="identical text") for i in range(5)]
    out = ranker.run(query="q", documents=same)["documents"]
    assert [d.id for d in out] == [f"t{i}" for i in range(5)]
    assert len({d.score for d in out}) == 1


def test_empty_and_missing_content_scored_as_empty_text(ranker: GumbelRanker) -> None:
    docs = [
        Document(id="none", content=None, meta={"k": "v"}),
        Document(id="empty", content=""),
        Document(id="text", content="some text"),
    ]
    out = {d.id: d for d in ranker.run(query="q", documents=docs, scale_score=False)["documents"]}
    assert set(out) == {"none", "empty", "text"}
    empty_raw, text_raw = raw_scores(ranker, "q", ["", "some text"])
    assert out["none"].score == pytest.approx(empty_raw)
    assert out["empty"].score == pytest.approx(empty_raw)
    assert out["text"].score == pytest.approx(text_raw)
    assert out["none"].content is None and out["none"].meta == {"k": "v"}


def test_inputs_are_not_mutated_and_everything_else_is_kept(ranker: GumbelRanker) -> None:
    docs = [replace(d, meta={**d.meta, "nested": {"x": [1, 2]}}, embedding=[0.1, 0.2]) for d in DOCS]
    before = [d.to_dict() for d in docs]
    out = ranker.run(query="capital", documents=docs)["documents"]
    assert [d.to_dict() for d in docs] == before
    assert all(d.score is None for d in docs)
    by_id = {d.id: d for d in docs}
    for d in out:
        source = by_id[d.id]
        assert d is not source and d.meta is not source.meta
        assert d.meta == source.meta and d.content == source.content and d.embedding == source.embedding
        assert d.score is not None
    out[0].meta["added"] = True
    assert "added" not in by_id[out[0].id].meta


def test_deduplicates_by_id_keeping_highest_score(ranker: GumbelRanker) -> None:
    low = Document(id="dup", content="Berlin", meta={"copy": "low"}, score=0.1)
    high = Document(id="dup", content="Berlin", meta={"copy": "high"}, score=0.9)
    other = Document(id="x", content="Paris")
    out = ranker.run(query="Berlin", documents=[low, other, high])["documents"]
    assert sorted(d.id for d in out) == ["dup", "x"]
    assert next(d for d in out if d.id == "dup").meta == {"copy": "high"}


def test_prefixes_suffixes_and_meta_fields_change_the_scored_text(ranker: GumbelRanker) -> None:
    r = GumbelRanker(
        model=ranker.model,
        query_prefix="query: ",
        query_suffix=" ?",
        document_prefix="passage: ",
        document_suffix=" .",
        meta_fields_to_embed=["title", "missing", "n"],
        embedding_separator=" | ",
        scale_score=False,
        device=ComponentDevice.from_str("cpu"),
    )
    r._lazy = ranker._lazy
    assert r._prepare_text(DOCS[0]) == "passage: Berlin | 1 | Berlin is the capital of Germany. ."
    assert document_text(Document(content=None, meta={"title": None})) == ""
    out = {d.id: d.score for d in r.run(query="capital", documents=DOCS)["documents"]}
    texts = [r._prepare_text(d) for d in DOCS]
    expected = raw_scores(ranker, "query: capital ?", texts)
    assert [out[d.id] for d in DOCS] == pytest.approx(expected)


# ----------------------------------------------------------------------------- serialisation


def test_to_dict_from_dict_round_trip(tiny_bi_encoder_dir: Path) -> None:
    r = GumbelRanker(
        model=tiny_bi_encoder_dir,
        device=ComponentDevice.from_str("cpu"),
        top_k=3,
        query_prefix="q: ",
        meta_fields_to_embed=["title"],
        scale_score=False,
        score_threshold=0.25,
        batch_size=4,
        max_length=64,
        model_kwargs={"torch_dtype": torch.float32},
    )
    data = r.to_dict()
    assert data["type"] == "haystack_integrations.components.rankers.gumbel.ranker.GumbelRanker"
    params = data["init_parameters"]
    assert params["model"] == str(tiny_bi_encoder_dir)
    assert params["device"] == {"type": "single", "device": "cpu"}
    assert params["model_kwargs"] == {"torch_dtype": "torch.float32"}
    # Serialising must not turn the live instance's dtype into a string.
    assert r.model_kwargs == {"torch_dtype": torch.float32}
    restored = GumbelRanker.from_dict(data)
    assert restored.to_dict() == data
    assert restored.device == r.device
    assert restored.model_kwargs == {"torch_dtype": torch.float32}
    assert data["init_parameters"]["model_kwargs"] == {"torch_dtype": "torch.float32"}  # input untouched
    out = restored.run(query="capital", documents=DOCS)["documents"]
    assert len(out) == 3 and all(d.score >= 0.25 for d in out)


def test_default_model_serialises_as_none() -> None:
    data = GumbelRanker().to_dict()
    assert data["init_parameters"]["model"] is None
    assert GumbelRanker.from_dict(data).model is None


def test_from_dict_rejects_unknown_parameters() -> None:
    data = GumbelRanker().to_dict()
    data["init_parameters"]["topk"] = 5
    with pytest.raises(
        DeserializationError, match=r"unknown init parameter\(s\) 'topk'.*Valid parameters.*top_k"
    ):
        GumbelRanker.from_dict(data)


# ----------------------------------------------------------------------------- async


def test_run_async_matches_run(ranker: GumbelRanker) -> None:
    sync = ranker.run(query="capital of France", documents=DOCS, top_k=3)
    result = asyncio.run(ranker.run_async(query="capital of France", documents=DOCS, top_k=3))
    assert [(d.id, d.score) for d in result["documents"]] == [(d.id, d.score) for d in sync["documents"]]
    assert asyncio.run(ranker.run_async(query="q", documents=[])) == {"documents": []}
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        asyncio.run(ranker.run_async(query="q", documents=DOCS, top_k=0))


def test_run_async_does_not_block_the_event_loop(tiny_bi_encoder_dir: Path) -> None:
    # A fresh ranker, so model loading (warm-up) happens inside run_async too.
    # batch_size=1: many small forward passes, so the work lasts long enough to watch the loop.
    r = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"), batch_size=1)
    docs = [Document(id=str(i), content=f"document number {i} " * 8) for i in range(96)]

    async def main() -> tuple[int, float]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(ticker())
        start = time.perf_counter()
        await r.warm_up_async()
        out = await r.run_async(query="document number 7", documents=docs)
        elapsed = time.perf_counter() - start
        done.set()
        await task
        assert len(out["documents"]) == 10
        return ticks, elapsed

    ticks, elapsed = asyncio.run(main())
    # A blocked loop would tick about once; a free one ticks every few milliseconds while the model works.
    assert elapsed > 0.05
    assert ticks >= 10, (ticks, elapsed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_device_matches_cpu(tiny_bi_encoder_dir: Path) -> None:
    cpu = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"), scale_score=False)
    cuda = ComponentDevice.from_str("cuda:0")
    gpu = GumbelRanker(model=tiny_bi_encoder_dir, device=cuda, scale_score=False)
    on_cpu = cpu.run(query="capital of Germany", documents=DOCS)["documents"]
    on_gpu = gpu.run(query="capital of Germany", documents=DOCS)["documents"]
    assert gpu.reranker is not None and gpu.reranker.device.type == "cuda"
    assert gpu.to_dict()["init_parameters"]["device"] == {"type": "single", "device": "cuda:0"}
    assert [d.id for d in on_gpu] == [d.id for d in on_cpu]
    assert [d.score for d in on_gpu] == pytest.approx([d.score for d in on_cpu], rel=1e-5, abs=1e-3)
    assert all(type(d.score) is float for d in on_gpu)
