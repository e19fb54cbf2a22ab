"""GumbelRanker in real Haystack pipelines: BM25 retrieval + reranking, YAML round trips, async runs."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.core.errors import DeserializationError, PipelineError
from haystack.core.serialization_security import DEFAULT_ALLOWED_MODULES
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import ComponentDevice
from haystack_integrations.components.rankers.gumbel import GumbelRanker

CORPUS = [
    Document(
        id="eiffel",
        content="The Eiffel Tower is a wrought-iron tower in Paris, France.",
        meta={"t": "Eiffel"},
    ),
    Document(
        id="louvre", content="The Louvre in Paris is the most visited art museum.", meta={"t": "Louvre"}
    ),
    Document(id="berlin", content="Berlin is the capital and largest city of Germany.", meta={"t": "Berlin"}),
    Document(id="tower", content="A tower is a tall structure, taller than it is wide.", meta={"t": "Tower"}),
    Document(
        id="iron", content="Wrought iron is an iron alloy with a very low carbon content.", meta={"t": "Iron"}
    ),
    Document(
        id="photo", content="Photosynthesis turns light into chemical energy in plants.", meta={"t": "Photo"}
    ),
]


def build_pipeline(ranker: GumbelRanker, index: str) -> Pipeline:
    # A shared in-memory index: a pipeline loaded from YAML in this process sees the same documents.
    store = InMemoryDocumentStore(index=index)
    if store.count_documents() == 0:
        store.write_documents(CORPUS)
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=6))
    pipe.add_component("ranker", ranker)
    pipe.connect("retriever.documents", "ranker.documents")
    return pipe


def run(pipe: Pipeline, query: str) -> list[tuple[str, float]]:
    out = pipe.run({"retriever": {"query": query}, "ranker": {"query": query}})
    return [(d.id, d.score) for d in out["ranker"]["documents"]]


def test_haystack_integrations_is_on_the_default_allowlist() -> None:
    assert "haystack_integrations" in DEFAULT_ALLOWED_MODULES


def test_yaml_round_trip_with_tiny_model(tiny_bi_encoder_dir: Path) -> None:
    ranker = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"), top_k=3)
    pipe = build_pipeline(ranker, f"gumbel-tiny-{uuid.uuid4()}")
    yaml_text = pipe.dumps()
    assert "haystack_integrations.components.rankers.gumbel.ranker.GumbelRanker" in yaml_text
    assert str(tiny_bi_encoder_dir) in yaml_text

    loaded = Pipeline.loads(yaml_text)  # the default allowlist, no flags
    loaded_ranker = loaded.get_component("ranker")
    assert isinstance(loaded_ranker, GumbelRanker) and loaded_ranker is not ranker
    assert loaded_ranker.to_dict() == ranker.to_dict()
    assert loaded.dumps() == yaml_text

    before = run(pipe, "wrought iron tower")
    after = run(loaded, "wrought iron tower")
    assert len(before) == 3
    assert [i for i, _ in after] == [i for i, _ in before]
    assert [s for _, s in after] == pytest.approx([s for _, s in before], rel=1e-5, abs=1e-6)


def test_unknown_ranker_parameter_in_yaml_is_rejected(tiny_bi_encoder_dir: Path) -> None:
    ranker = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"))
    yaml_text = build_pipeline(ranker, f"gumbel-bad-{uuid.uuid4()}").dumps()
    bad = yaml_text.replace("scale_score: true", "scale_score: true\n      top_n: 3")
    assert bad != yaml_text
    with pytest.raises((DeserializationError, PipelineError), match=r"unknown init parameter\(s\) 'top_n'"):
        Pipeline.loads(bad)


def test_pipeline_run_async(tiny_bi_encoder_dir: Path) -> None:
    ranker = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"), top_k=4)
    pipe = build_pipeline(ranker, f"gumbel-async-{uuid.uuid4()}")
    sync = run(pipe, "museum in Paris")
    data = {"retriever": {"query": "museum in Paris"}, "ranker": {"query": "museum in Paris"}}
    out = asyncio.run(pipe.run_async(data))
    assert [(d.id, d.score) for d in out["ranker"]["documents"]] == sync


def test_empty_retrieval_gives_empty_ranking(tiny_bi_encoder_dir: Path) -> None:
    ranker = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"))
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=InMemoryDocumentStore()))
    pipe.add_component("ranker", ranker)
    pipe.connect("retriever.documents", "ranker.documents")
    out = pipe.run({"retriever": {"query": "anything"}, "ranker": {"query": "anything"}})
    assert out == {"ranker": {"documents": []}}


@pytest.mark.slow
def test_default_model_ranks_relevant_passage_first_and_survives_yaml() -> None:
    ranker = GumbelRanker(device=ComponentDevice.from_str("cpu"), top_k=3)
    pipe = build_pipeline(ranker, f"gumbel-default-{uuid.uuid4()}")
    query = "Which museum in Paris gets the most visitors?"
    before = run(pipe, query)
    assert before[0][0] == "louvre"
    assert "photo" not in [i for i, _ in before]

    yaml_text = pipe.dumps()
    assert "model: null" in yaml_text
    loaded = Pipeline.loads(yaml_text)
    after = run(loaded, query)
    assert [i for i, _ in after] == [i for i, _ in before]
    assert [s for _, s in after] == pytest.approx([s for _, s in before], rel=1e-5, abs=1e-6)

    # Reranking beats plain BM25 ordering here: BM25 favours the many "tower"/"iron" term matches.
    ranked = ranker.run(query="What is the capital of Germany?", documents=CORPUS)["documents"]
    assert ranked[0].id == "berlin"


def test_stock_ranker_yaml_loads_with_only_the_type_changed(tiny_cross_encoder_dir: Path) -> None:
    # The drop-in claim, for a saved pipeline: Haystack's own ranker, dumped, with `type:` swapped.
    stock_module = pytest.importorskip("haystack_integrations.components.rankers.sentence_transformers")
    from gumbel_rag.errors import ModelLoadError

    stock = stock_module.SentenceTransformersSimilarityRanker(
        device=ComponentDevice.from_str("cpu"), top_k=3, tokenizer_kwargs={"model_max_length": 64}
    )
    pipe = Pipeline()
    pipe.add_component("ranker", stock)
    yaml_text = pipe.dumps()
    stock_type = "sentence_transformers.sentence_transformers_similarity.SentenceTransformersSimilarityRanker"
    assert stock_type in yaml_text and "token:" in yaml_text and "config_kwargs: null" in yaml_text
    ours = yaml_text.replace(stock_type, "gumbel.ranker.GumbelRanker")
    loaded = Pipeline.loads(ours).get_component("ranker")
    assert isinstance(loaded, GumbelRanker)
    stock_params = stock.to_dict()["init_parameters"]
    for name, value in stock_params.items():
        assert loaded.to_dict()["init_parameters"][name] == value, name
    # The stock default is a hub model: offline, loading it says so in one line.
    with pytest.raises(ModelLoadError, match=r"'cross-encoder/ms-marco-MiniLM-L-6-v2'.*HF_HUB_OFFLINE"):
        loaded.warm_up()
    # Pointed at a local cross-encoder, the same saved settings rank.
    local = Pipeline.loads(ours.replace("cross-encoder/ms-marco-MiniLM-L-6-v2", str(tiny_cross_encoder_dir)))
    out = local.run({"ranker": {"query": "tower", "documents": CORPUS}})["ranker"]["documents"]
    assert len(out) == 3 and all(0.0 <= d.score <= 1.0 for d in out)  # scale_score=True: sigmoid(logit)


def test_stock_onnx_backend_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="backend='onnx' is not supported: gumbel-rag runs 'torch'"):
        GumbelRanker(backend="onnx")  # type: ignore[arg-type]
