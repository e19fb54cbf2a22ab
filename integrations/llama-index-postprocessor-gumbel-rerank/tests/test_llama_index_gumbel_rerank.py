"""GumbelRerank inside real LlamaIndex pipelines: ranking, events, async, copies, bad input."""

from __future__ import annotations

import asyncio
import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.postprocessor.gumbel_rerank import DEFAULT_MODEL_NAME, GumbelRerank, node_text

from gumbel_rag import GumbelReranker


class RerankRecorder(BaseEventHandler):
    """Collects the rerank events LlamaIndex's dispatcher delivers."""

    events: list[BaseEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Keep ReRankStartEvent / ReRankEndEvent."""
        if isinstance(event, ReRankStartEvent | ReRankEndEvent):
            self.events.append(event)


@pytest.fixture()
def recorder():
    root = get_dispatcher()
    handler = RerankRecorder()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


@pytest.fixture(scope="module")
def tiny_rerank(tiny_bi_encoder_dir: Path) -> GumbelRerank:
    """A loaded tiny-model reranker returning every node (copy it with model_copy to change fields)."""
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=None, device="cpu")
    assert rerank.reranker.kind == "bi-encoder"  # load once, shared by model_copy()s
    return rerank


def make_nodes(texts: list[str], metadata: list[dict[str, Any]] | None = None) -> list[NodeWithScore]:
    metadata = metadata or [{} for _ in texts]
    return [
        NodeWithScore(node=TextNode(text=t, metadata=m, id_=f"n{i}"), score=1.0 - i / 100)
        for i, (t, m) in enumerate(zip(texts, metadata, strict=True))
    ]


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("top_n", [0, -1])
def test_non_positive_top_n_is_rejected_at_construction(top_n: int) -> None:
    with pytest.raises(ValueError, match="top_n must be a positive integer or None"):
        GumbelRerank(top_n=top_n)


def test_bad_batch_size_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        GumbelRerank(batch_size=0)


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="topn"):
        GumbelRerank(topn=5)


def test_changing_load_options_reloads_the_model(
    tiny_bi_encoder_dir: Path, tiny_cross_encoder_dir: Path
) -> None:
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, device="cpu")
    first = rerank.reranker
    rerank.batch_size = 4
    assert rerank.reranker is first and first.batch_size == 4  # no reload for batch size
    rerank.model = str(tiny_cross_encoder_dir)
    assert rerank.reranker is not first and rerank.reranker.kind == "cross-encoder"


def test_defaults_and_serialization_round_trip(tmp_path: Path) -> None:
    rerank = GumbelRerank(model=tmp_path, top_n=5, keep_retrieval_score=True)
    assert rerank.model == str(tmp_path)  # a Path is stored as text so the config serializes
    assert GumbelRerank().top_n == 3 and GumbelRerank().model is None
    data = rerank.to_dict()
    assert data["class_name"] == "GumbelRerank"
    clone = GumbelRerank.from_dict(data)
    assert (clone.model, clone.top_n, clone.keep_retrieval_score) == (str(tmp_path), 5, True)
    assert GumbelRerank.from_json(rerank.to_json()).metadata_mode == MetadataMode.EMBED


def test_missing_query_is_an_error(tiny_rerank: GumbelRerank) -> None:
    with pytest.raises(ValueError, match="needs a query"):
        tiny_rerank.postprocess_nodes(make_nodes(["a"]))


# ---------------------------------------------------------------- fine-tuned / saved model directories


def test_fine_tuned_model_directory_is_accepted(tiny_bi_encoder_dir: Path) -> None:
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=2, device="cpu")
    assert rerank._lazy.loaded is None  # lazy: nothing loaded at construction
    nodes = make_nodes(["alpha beta", "gamma", "delta epsilon zeta"])
    out = rerank.postprocess_nodes(nodes, query_str="alpha")
    loaded = rerank.reranker
    assert rerank.postprocess_nodes(nodes, query_str="alpha") == out
    assert rerank.reranker is loaded  # loaded once and reused
    direct = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, device="cpu")
    expected = direct.rerank("alpha", [node_text(n.node) for n in nodes], top_k=2)
    assert [o.node.node_id for o in out] == [f"n{r.index}" for r in expected]
    assert [o.score for o in out] == pytest.approx([r.score for r in expected])


def test_cross_encoder_directory_is_accepted(tiny_cross_encoder_dir: Path) -> None:
    rerank = GumbelRerank(model=tiny_cross_encoder_dir, top_n=None, device="cpu")
    out = rerank.postprocess_nodes(make_nodes(["x", "y", "z"]), query_str="q")
    assert rerank.reranker.kind == "cross-encoder"
    assert sorted(o.node.node_id for o in out) == ["n0", "n1", "n2"]


# ---------------------------------------------------------------- nodes in -> nodes out


def test_scores_threshold_and_top_n(tiny_rerank: GumbelRerank) -> None:
    nodes = make_nodes(["one", "two two", "three three three", "four", "five five"])
    full = tiny_rerank.postprocess_nodes(nodes, query_str="two")
    scores = [n.score for n in full]
    assert scores == sorted(scores, reverse=True) and len(full) == 5
    top2 = tiny_rerank.model_copy(update={"top_n": 2}).postprocess_nodes(nodes, query_str="two")
    assert [n.node.node_id for n in top2] == [n.node.node_id for n in full[:2]]
    cut = scores[2]
    kept = tiny_rerank.model_copy(update={"score_threshold": cut}).postprocess_nodes(nodes, query_str="two")
    assert [n.node.node_id for n in kept] == [n.node.node_id for n in full if n.score >= cut]


def test_empty_input_returns_empty_and_still_emits_events(recorder: RerankRecorder) -> None:
    debug = LlamaDebugHandler()
    rerank = GumbelRerank(model="/nonexistent/never-loaded", callback_manager=CallbackManager([debug]))
    assert rerank.postprocess_nodes([], query_str="anything") == []
    assert rerank._lazy.loaded is None  # empty input never loads the model
    kinds = [type(e) for e in recorder.events]
    assert kinds == [ReRankStartEvent, ReRankEndEvent]
    assert recorder.events[0].nodes == [] and recorder.events[1].nodes == []
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1 and pairs[0][1].payload[EventPayload.NODES] == []


def test_empty_text_nodes_are_scored_as_empty_text(tiny_rerank: GumbelRerank) -> None:
    nodes = [
        NodeWithScore(node=TextNode(text="", metadata={"title": "Orphan"}, id_="empty"), score=0.5),
        NodeWithScore(node=TextNode(text="some text", id_="full"), score=0.4),
        NodeWithScore(node=Document(text="", id_="doc-empty"), score=0.3),
        NodeWithScore(node=TextNode(text="   ", id_="blank"), score=0.2),
    ]
    out = tiny_rerank.postprocess_nodes(nodes, query_str="query")
    by_id = {o.node.node_id: o for o in out}
    assert set(by_id) == {"empty", "full", "doc-empty", "blank"}  # nothing dropped
    empty_score = tiny_rerank.reranker.score("query", [""])[0]
    for node_id in ("empty", "doc-empty", "blank"):
        assert by_id[node_id].score == pytest.approx(empty_score, rel=1e-5, abs=1e-4)
    assert by_id["empty"].node.metadata == {"title": "Orphan"}


def test_caller_nodes_are_not_mutated_and_retrieval_score_is_kept(tiny_rerank: GumbelRerank) -> None:
    source = RelatedNodeInfo(node_id="doc-1", metadata={"file": "a.txt"})
    nodes = [
        NodeWithScore(
            node=TextNode(
                text=f"passage number {i}",
                id_=f"node-{i}",
                metadata={"page": i, "file": "a.txt"},
                relationships={NodeRelationship.SOURCE: source},
                excluded_llm_metadata_keys=["file"],
            ),
            score=0.9 - i / 10,
        )
        for i in range(4)
    ]
    before = [(n.score, n.node.model_dump()) for n in nodes]
    rerank = tiny_rerank.model_copy(update={"keep_retrieval_score": True, "top_n": 3})
    out = rerank.postprocess_nodes(nodes, query_str="passage number 2")
    assert [(n.score, n.node.model_dump()) for n in nodes] == before  # caller's objects untouched
    assert len(out) == 3
    originals = {n.node.node_id: n for n in nodes}
    for item in out:
        original = originals[item.node.node_id]
        assert item is not original and item.node is not original.node
        assert item.node.metadata == {**original.node.metadata, "retrieval_score": original.score}
        assert item.node.relationships == original.node.relationships
        assert item.node.text == original.node.text
        # bookkeeping stays out of prompts and embeddings
        assert "retrieval_score" not in item.node.get_content(MetadataMode.LLM)
        assert "file" not in item.node.get_content(MetadataMode.LLM)
        assert "retrieval_score" not in item.node.get_content(MetadataMode.EMBED)
    plain = tiny_rerank.postprocess_nodes(nodes, query_str="passage number 2")
    assert all("retrieval_score" not in n.node.metadata for n in plain)
    assert [n.score for n in nodes] == [b[0] for b in before]


def test_metadata_mode_decides_what_is_scored(tiny_rerank: GumbelRerank) -> None:
    node = TextNode(text="body", metadata={"title": "Heading"}, excluded_embed_metadata_keys=[])
    assert node_text(node) == "title: Heading\n\nbody"
    assert node_text(node, MetadataMode.NONE) == "body"
    none_mode = tiny_rerank.model_copy(update={"metadata_mode": MetadataMode.NONE})
    [scored] = none_mode.postprocess_nodes([NodeWithScore(node=node, score=1.0)], query_str="q")
    assert scored.score == pytest.approx(tiny_rerank.reranker.score("q", ["body"])[0], rel=1e-5, abs=1e-4)


# ---------------------------------------------------------------- real pipelines, real default model


@pytest.mark.slow
def test_query_engine_returns_reranked_source_nodes(
    documents: list[Document], queries: dict[str, str], encoder_embedding
) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=encoder_embedding)
    rerank = GumbelRerank(top_n=2)
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=len(documents), node_postprocessors=[rerank]
    )
    by_id = {d.doc_id: d for d in documents}
    for query, answer_id in queries.items():
        response = engine.query(query)
        sources = response.source_nodes
        assert len(sources) == 2
        assert sources[0].node.ref_doc_id == answer_id
        assert sources[0].score > sources[1].score
        # the score is the reranker's, not the retriever's cosine similarity
        assert sources[0].score == pytest.approx(
            rerank.reranker.score(query, [node_text(sources[0].node)])[0], rel=1e-5, abs=1e-3
        )
        for s in sources:
            assert s.node.metadata == by_id[s.node.ref_doc_id].metadata


@pytest.mark.slow
def test_reranking_fixes_an_uninformative_retriever(
    documents: list[Document], queries: dict[str, str]
) -> None:
    # MockEmbedding gives every node the same similarity: the retriever knows nothing about relevance.
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    retriever = index.as_retriever(similarity_top_k=len(documents))
    rerank = GumbelRerank(top_n=3, keep_retrieval_score=True)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(), node_postprocessors=[rerank])
    for query, answer_id in queries.items():
        retrieved = retriever.retrieve(query)
        assert len({round(r.score, 6) for r in retrieved}) == 1
        sources = engine.query(query).source_nodes
        assert sources[0].node.ref_doc_id == answer_id
        assert len(sources) == 3
        assert all(s.node.metadata["retrieval_score"] == pytest.approx(retrieved[0].score) for s in sources)


@pytest.mark.slow
def test_async_query_engine(documents: list[Document], encoder_embedding) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=encoder_embedding)
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=len(documents), node_postprocessors=[GumbelRerank(top_n=1)]
    )
    response = asyncio.run(engine.aquery("Which is the highest mountain on Earth?"))
    assert [s.node.ref_doc_id for s in response.source_nodes] == ["everest"]


# ---------------------------------------------------------------- events and callbacks


def test_pipeline_emits_dispatcher_events_and_callback_events(
    tiny_bi_encoder_dir: Path, documents: list[Document], recorder: RerankRecorder
) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    debug = LlamaDebugHandler()
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=2, device="cpu")
    engine = RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=4),
        llm=MockLLM(),
        node_postprocessors=[rerank],
        callback_manager=CallbackManager([debug]),
    )
    response = engine.query("capital of France")
    start, end = recorder.events
    assert isinstance(start, ReRankStartEvent) and isinstance(end, ReRankEndEvent)
    assert len(start.nodes) == 4 and start.top_n == 2 and start.model_name == str(tiny_bi_encoder_dir)
    assert isinstance(start.query, QueryBundle) and start.query.query_str == "capital of France"
    assert [n.node.node_id for n in end.nodes] == [n.node.node_id for n in response.source_nodes]
    [(cb_start, cb_end)] = debug.get_event_pairs(CBEventType.RERANKING)
    assert cb_start.payload[EventPayload.MODEL_NAME] == str(tiny_bi_encoder_dir)
    assert cb_start.payload[EventPayload.QUERY_STR] == "capital of France"
    assert cb_start.payload[EventPayload.TOP_K] == 2
    assert len(cb_start.payload[EventPayload.NODES]) == 4
    assert cb_end.payload[EventPayload.NODES] == end.nodes


def test_default_model_name_and_top_n_none_in_events(
    recorder: RerankRecorder, tiny_rerank: GumbelRerank
) -> None:
    GumbelRerank().postprocess_nodes([], query_str="q")  # model=None: reported under the default's name
    tiny_rerank.postprocess_nodes(make_nodes(["x", "y"]), query_str="q")
    default_start, _, tiny_start, _ = recorder.events
    assert default_start.model_name == DEFAULT_MODEL_NAME and default_start.top_n == 3
    assert tiny_start.top_n == 2  # top_n=None reports every node (the event requires an int)


# ---------------------------------------------------------------- async


def test_async_runs_off_the_event_loop(tiny_bi_encoder_dir: Path, recorder: RerankRecorder) -> None:
    rerank = GumbelRerank(model=tiny_bi_encoder_dir, top_n=None, device="cpu")
    nodes = make_nodes([f"passage {i} " * (i % 7 + 1) for i in range(64)])

    async def main() -> tuple[list[NodeWithScore], int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        out = await rerank.apostprocess_nodes(nodes, query_str="passage 3")  # loads the model, then scores
        during = ticks - before
        done.set()
        await task
        return out, during

    out, during = asyncio.run(main())
    # A blocking call would let the ticker run at most once while the model loads and scores.
    assert during >= 5
    sync = rerank.postprocess_nodes(nodes, query_str="passage 3")
    assert [(n.node.node_id, n.score) for n in out] == [(n.node.node_id, n.score) for n in sync]
    assert [type(e) for e in recorder.events] == [ReRankStartEvent, ReRankEndEvent] * 2


# ---------------------------------------------------------------- property: nodes in -> nodes out

metadata_values = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=8))
node_specs = st.lists(
    st.tuples(
        st.text(max_size=30),
        st.dictionaries(st.text("abcdefghij_", min_size=1, max_size=6), metadata_values, max_size=3),
    ),
    max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=node_specs, top_n=st.one_of(st.none(), st.integers(1, 10)), query=st.text(max_size=20))
def test_property_every_node_comes_back_sorted_with_metadata(
    tiny_rerank: GumbelRerank, specs: list[tuple[str, dict[str, Any]]], top_n: int | None, query: str
) -> None:
    nodes = make_nodes([t for t, _ in specs], [m for _, m in specs])
    snapshot = copy.deepcopy([(n.score, n.node.model_dump()) for n in nodes])
    full = tiny_rerank.postprocess_nodes(nodes, query_str=query)
    out = tiny_rerank.model_copy(update={"top_n": top_n}).postprocess_nodes(nodes, query_str=query)

    assert sorted(n.node.node_id for n in full) == sorted(n.node.node_id for n in nodes)
    assert len(out) == (len(nodes) if top_n is None else min(top_n, len(nodes)))
    assert [n.node.node_id for n in out] == [n.node.node_id for n in full[: len(out)]]
    position = {n.node.node_id: i for i, n in enumerate(nodes)}
    for a, b in itertools.pairwise(full):
        assert a.score >= b.score
        if a.score == b.score:  # ties keep input order
            assert position[a.node.node_id] < position[b.node.node_id]
    for item in out:
        original = nodes[position[item.node.node_id]].node
        assert item.node.metadata == original.metadata
        assert item.node.get_content() == original.get_content()
    assert [(n.score, n.node.model_dump()) for n in nodes] == snapshot
