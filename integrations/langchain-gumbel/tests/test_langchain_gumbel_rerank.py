"""GumbelRerank with real LangChain objects: compressor contract, retrievers, LCEL, async, models."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import langchain_gumbel
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_gumbel import GumbelRerank
from pydantic import ValidationError

from gumbel_rag import GumbelReranker
from gumbel_rag.errors import ModelLoadError

QUERY = "What is the capital of France?"


class EventRecorder(BaseCallbackHandler):
    """Records retriever start/end events."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append("start")

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append(f"end:{len(documents)}")


# ---------------------------------------------------------------- construction


def test_is_a_document_compressor_with_defaults() -> None:
    rerank = GumbelRerank()
    assert isinstance(rerank, BaseDocumentCompressor)
    assert (rerank.model, rerank.top_n, rerank.score_threshold, rerank.batch_size, rerank.device) == (
        None,
        3,
        None,
        32,
        None,
    )
    assert langchain_gumbel.__all__ and "GumbelRerank" in langchain_gumbel.__all__


@pytest.mark.parametrize("top_n", [0, -1, True, -0.0])
def test_top_n_must_be_positive(top_n: int) -> None:
    with pytest.raises(ValidationError, match="top_n must be a positive integer or None"):
        GumbelRerank(top_n=top_n)
    rerank = GumbelRerank()
    with pytest.raises(ValidationError, match="top_n must be a positive integer or None"):
        rerank.top_n = top_n
    assert rerank.top_n == 3


def test_bad_batch_size_threshold_and_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="score_threshold must be a finite number"):
        GumbelRerank(score_threshold=float("nan"))
    with pytest.raises(ValidationError, match="batch_size must be a positive integer"):
        GumbelRerank(batch_size=0)
    with pytest.raises(ValidationError, match="topn"):
        GumbelRerank(topn=3)


def test_model_accepts_a_path(tiny_bi_encoder_dir: Path) -> None:
    rerank = GumbelRerank(model=tiny_bi_encoder_dir)
    assert rerank.model == str(tiny_bi_encoder_dir)


def test_missing_model_fails_with_a_clear_error(tmp_path: Path) -> None:
    rerank = GumbelRerank(model=str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="nope"):
        rerank.compress_documents([Document("x")], QUERY)


# ---------------------------------------------------------------- the compressor contract


def test_empty_input_returns_empty_without_loading_the_model() -> None:
    rerank = GumbelRerank(model="/does/not/exist")
    assert rerank.compress_documents([], QUERY) == []
    assert asyncio.run(rerank.acompress_documents([], QUERY)) == []
    assert rerank._lazy.loaded is None


def test_default_model_ranks_the_relevant_document_first(corpus: list[Document]) -> None:
    before = [doc.model_dump() for doc in corpus]
    rerank = GumbelRerank(top_n=2)
    out = rerank.compress_documents(corpus, QUERY)
    assert out[0].id == "paris"
    assert len(out) == 2
    first = out[0]
    assert isinstance(first.metadata["relevance_score"], float)
    assert first.metadata["relevance_score"] > out[1].metadata["relevance_score"]
    # Every original metadata key and the id survive; the caller's documents are untouched.
    assert {k: v for k, v in first.metadata.items() if k != "relevance_score"} == corpus[0].metadata
    assert [doc.model_dump() for doc in corpus] == before
    assert all(o is not c for o in out for c in corpus)


def test_scores_match_the_core_and_top_n_none_keeps_all(
    corpus: list[Document], default_rerank: GumbelRerank, default_reranker: GumbelReranker
) -> None:
    out = default_rerank.model_copy(update={"top_n": None}).compress_documents(corpus, QUERY)
    expected = default_reranker.score(QUERY, [doc.page_content for doc in corpus])
    assert sorted(doc.id for doc in out) == sorted(doc.id for doc in corpus)
    by_id = {doc.id: doc.metadata["relevance_score"] for doc in out}
    for doc, score in zip(corpus, expected, strict=True):
        assert by_id[doc.id] == pytest.approx(score, rel=1e-5, abs=1e-4)
    scores = [doc.metadata["relevance_score"] for doc in out]
    assert scores == sorted(scores, reverse=True)


def test_top_n_larger_than_input_returns_everything(
    corpus: list[Document], default_rerank: GumbelRerank
) -> None:
    assert len(default_rerank.model_copy(update={"top_n": 50}).compress_documents(corpus[:2], QUERY)) == 2


def test_score_threshold_filters_in_model_units(corpus: list[Document], default_rerank: GumbelRerank) -> None:
    ranked = default_rerank.model_copy(update={"top_n": None}).compress_documents(corpus, QUERY)
    all_scores = [d.metadata["relevance_score"] for d in ranked]
    threshold = all_scores[1]  # keeps exactly the two best (scores are distinct here)
    keep_all = default_rerank.model_copy(update={"top_n": None, "score_threshold": threshold})
    out = keep_all.compress_documents(corpus, QUERY)
    assert len(out) == 2
    assert all(doc.metadata["relevance_score"] >= threshold for doc in out)
    assert default_rerank.model_copy(update={"score_threshold": 1e9}).compress_documents(corpus, QUERY) == []


def test_empty_content_is_scored_not_dropped(corpus: list[Document], default_rerank: GumbelRerank) -> None:
    docs = [*corpus[:2], Document(page_content="", id="empty", metadata={"k": 1})]
    out = default_rerank.model_copy(update={"top_n": None}).compress_documents(docs, QUERY)
    assert len(out) == 3
    empty = next(doc for doc in out if doc.id == "empty")
    assert empty.page_content == ""
    assert empty.metadata["k"] == 1
    assert isinstance(empty.metadata["relevance_score"], float)


def test_existing_score_is_overwritten_and_nested_metadata_is_copied(default_rerank: GumbelRerank) -> None:
    doc = Document("Paris is in France.", id="p", metadata={"relevance_score": "stale", "nested": {"a": [1]}})
    (out,) = default_rerank.compress_documents([doc], QUERY)
    assert isinstance(out.metadata["relevance_score"], float)
    out.metadata["nested"]["a"].append(2)
    assert doc.metadata == {"relevance_score": "stale", "nested": {"a": [1]}}


def test_uncopyable_metadata_is_kept(tiny_bi_encoder_dir: Path) -> None:
    import threading

    lock = threading.Lock()
    doc = Document("text", metadata={"lock": lock})
    (out,) = GumbelRerank(model=str(tiny_bi_encoder_dir)).compress_documents([doc], QUERY)
    assert out.metadata["lock"] is lock
    assert "relevance_score" not in doc.metadata


def test_document_subclass_and_id_survive(tiny_bi_encoder_dir: Path) -> None:
    class MyDoc(Document):
        extra: str = "kept"

    doc = MyDoc(page_content="a", id="my-id", extra="yes")
    (out,) = GumbelRerank(model=str(tiny_bi_encoder_dir)).compress_documents([doc], QUERY)
    assert type(out) is MyDoc
    assert (out.id, out.extra) == ("my-id", "yes")


def test_non_string_query_is_a_type_error(tiny_bi_encoder_dir: Path) -> None:
    with pytest.raises(TypeError, match="query"):
        GumbelRerank(model=str(tiny_bi_encoder_dir)).compress_documents([Document("a")], 42)  # type: ignore[arg-type]


def test_missing_page_content_is_scored_as_empty(tiny_bi_encoder_dir: Path) -> None:
    # model_construct skips validation, as some loaders do; None content must still be scored.
    doc = Document.model_construct(page_content=None, metadata={"m": 1}, id="none")
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir), top_n=None)
    out = rerank.compress_documents([doc, Document("b")], QUERY)
    assert {d.id for d in out} == {"none", None}
    assert all(isinstance(d.metadata["relevance_score"], float) for d in out)


# ---------------------------------------------------------------- loading and settings


def test_fine_tuned_and_saved_directories_load(saved_model_dir: Path, tiny_bi_encoder_dir: Path) -> None:
    docs = [Document("alpha beta", id="a"), Document("gamma", id="b"), Document("", id="c")]
    core = GumbelReranker.from_pretrained(saved_model_dir, device="cpu")
    expected = core.score(QUERY, [d.page_content for d in docs])
    for model in (saved_model_dir, tiny_bi_encoder_dir):
        out = GumbelRerank(model=str(model), top_n=None, device="cpu").compress_documents(docs, QUERY)
        got = {d.id: d.metadata["relevance_score"] for d in out}
        assert [got[d.id] for d in docs] == pytest.approx(expected, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_cross_encoder_dir", "tiny_two_logit_cross_encoder_dir"])
def test_cross_encoder_directories_work(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    rerank = GumbelRerank(model=str(path), top_n=None)
    out = rerank.compress_documents([Document("a", id="1"), Document("b c", id="2")], QUERY)
    assert rerank.reranker.kind == "cross-encoder"
    assert {d.id for d in out} == {"1", "2"}


def test_model_is_loaded_once_and_reloaded_when_settings_change(
    tiny_bi_encoder_dir: Path, saved_model_dir: Path
) -> None:
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir))
    first = rerank.reranker
    rerank.compress_documents([Document("a")], QUERY)
    assert rerank.reranker is first
    rerank.batch_size = 7  # batching only: no reload
    assert rerank.reranker is first and first.batch_size == 7
    rerank.model = str(saved_model_dir)
    assert rerank.reranker is not first


def test_compressor_can_be_copied(tiny_bi_encoder_dir: Path) -> None:
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir), top_n=1)
    rerank.compress_documents([Document("a")], QUERY)
    clone = copy.deepcopy(rerank)
    other = rerank.model_copy(update={"top_n": 2})
    docs = [Document("a", id="1"), Document("b", id="2")]
    assert len(clone.compress_documents(docs, QUERY)) == 1
    assert len(other.compress_documents(docs, QUERY)) == 2


# ---------------------------------------------------------------- async


def test_async_matches_sync(corpus: list[Document], default_rerank: GumbelRerank) -> None:
    rerank = default_rerank.model_copy(update={"top_n": None})
    sync = rerank.compress_documents(corpus, QUERY)
    result = asyncio.run(rerank.acompress_documents(corpus, QUERY))
    assert [d.id for d in result] == [d.id for d in sync]
    assert [d.metadata for d in result] == [d.metadata for d in sync]


def test_async_does_not_block_the_event_loop(tiny_bi_encoder_dir: Path) -> None:
    docs = [Document(f"document number {i} " * 20) for i in range(256)]
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir), top_n=None, batch_size=8)

    async def main() -> tuple[int, float, int]:
        task = asyncio.create_task(rerank.acompress_documents(docs, QUERY))
        ticks = 0
        start = time.perf_counter()
        while not task.done():
            await asyncio.sleep(0.001)
            ticks += 1
        return ticks, time.perf_counter() - start, len(await task)

    ticks, elapsed, n = asyncio.run(main())
    assert n == 256
    # A blocked loop would tick about once; a free one ticks many times while loading and scoring run.
    assert elapsed > 0.02 and ticks >= 10, (ticks, elapsed)


def test_concurrent_async_calls_load_the_model_once(
    tiny_bi_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Any] = []
    original = GumbelReranker.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: type[GumbelReranker], *args: Any, **kwargs: Any) -> GumbelReranker:
        loads.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(GumbelReranker, "from_pretrained", classmethod(counting))
    rerank = GumbelRerank(model=str(tiny_bi_encoder_dir))

    async def main() -> list[Any]:
        calls = [rerank.acompress_documents([Document(f"d{i}")], QUERY) for i in range(4)]
        return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert len(loads) == 1
    assert all(len(r) == 1 for r in results)


# ---------------------------------------------------------------- inside LangChain


def test_contextual_compression_retriever_sync_and_async(
    vector_store: InMemoryVectorStore, default_rerank: GumbelRerank
) -> None:
    base = vector_store.as_retriever(search_kwargs={"k": 5})
    compressor = default_rerank.model_copy(update={"top_n": 2})
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    recorder = EventRecorder()
    docs = retriever.invoke(QUERY, config={"callbacks": [recorder]})
    assert docs[0].id == "paris"
    assert len(docs) == 2
    assert docs[0].metadata["source"] == "wiki/Paris"
    assert "relevance_score" in docs[0].metadata
    assert recorder.events[0] == "start" and recorder.events[-1] == "end:2"

    adocs = asyncio.run(retriever.ainvoke("Which river flows through northeastern Africa?"))
    assert adocs[0].id == "nile"


def test_contextual_compression_retriever_with_nothing_retrieved(embeddings: Any) -> None:
    empty_store = InMemoryVectorStore(embedding=embeddings)
    retriever = ContextualCompressionRetriever(
        base_compressor=GumbelRerank(), base_retriever=empty_store.as_retriever()
    )
    recorder = EventRecorder()
    assert retriever.invoke(QUERY, config={"callbacks": [recorder]}) == []
    assert recorder.events[0] == "start" and recorder.events[-1] == "end:0"


def test_lcel_chain_after_a_retriever(
    vector_store: InMemoryVectorStore, default_rerank: GumbelRerank
) -> None:
    rerank = default_rerank.model_copy(update={"top_n": 1})
    retriever = vector_store.as_retriever(search_kwargs={"k": 5})

    def rerank_step(inputs: dict[str, Any]) -> list[Document]:
        return list(rerank.compress_documents(inputs["docs"], inputs["question"]))

    async def arerank_step(inputs: dict[str, Any]) -> list[Document]:
        return list(await rerank.acompress_documents(inputs["docs"], inputs["question"]))

    chain = (
        {"docs": retriever, "question": RunnablePassthrough()}
        | RunnableLambda(rerank_step, afunc=arerank_step)
        | RunnableLambda(lambda docs: "\n".join(f"[{d.id}] {d.page_content}" for d in docs))
    )
    text = chain.invoke("Who created the Python programming language?")
    assert text.startswith("[python] Python is a high-level")
    assert asyncio.run(chain.ainvoke("What is the highest mountain on Earth?")).startswith("[everest]")
