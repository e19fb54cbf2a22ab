"""QALogEventHandler with real LlamaIndex engines: a VectorStoreIndex over real embeddings, GumbelRerank,
query and chat engines (sync, async, streaming), then `gumbel-rag train` on the captured log.

No LLM service runs here. Most tests use LlamaIndex's own MockLLM (it answers "text text ..."), so that
the answers are known; retrieval, reranking, instrumentation and files are real. One test runs the real
`HuggingFaceLLM` (llama-index-llms-huggingface) over a tiny random local causal LM, the path an
application serving a local model takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.llms import MockLLM
from llama_index.postprocessor.gumbel_rerank import GumbelRerank, QALogEventHandler

from gumbel_rag.data import QALogWriter, load_examples, write_qalog
from gumbel_rag.data.schema import Candidate, QAExample

ANSWER = "text text text"


class FailingLLM(MockLLM):
    """MockLLM whose completion fails, as a timed-out LLM service does."""

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise TimeoutError("the LLM timed out")


@pytest.fixture(scope="module")
def rerank() -> GumbelRerank:
    return GumbelRerank(top_n=2, device="cpu")


@pytest.fixture()
def index(documents: list[Document], encoder_embedding: Any) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(documents, embed_model=encoder_embedding)


@pytest.fixture()
def handler(tmp_path: Path) -> Iterator[QALogEventHandler]:
    h = QALogEventHandler(tmp_path / "qa.jsonl").register()
    yield h
    h.unregister()


def engine(index: VectorStoreIndex, rerank: GumbelRerank | None, **kwargs: Any) -> Any:
    post = [rerank] if rerank is not None else []
    return index.as_query_engine(
        llm=MockLLM(max_tokens=3), similarity_top_k=4, node_postprocessors=post, **kwargs
    )


def chat(index: VectorStoreIndex, rerank: GumbelRerank, mode: str = "context") -> Any:
    return index.as_chat_engine(
        chat_mode=mode, llm=MockLLM(max_tokens=3), similarity_top_k=4, node_postprocessors=[rerank]
    )


def test_a_query_records_the_candidates_the_picks_and_the_answer(
    index: VectorStoreIndex, rerank: GumbelRerank, handler: QALogEventHandler, queries: dict[str, str]
) -> None:
    question = "What is the capital of France?"
    with instrument_tags({"run_id": "my-run-1"}):
        response = engine(index, rerank).query(question)
    assert response.response == ANSWER
    (ex,), summary = load_examples(handler.writer.path)
    assert not summary.skipped and ex.id == "my-run-1"
    assert ex.question == question and ex.answers == [ANSWER]
    retrieved = index.as_retriever(similarity_top_k=4).retrieve(question)
    # The nodes the reranker chose from, with their retrieval scores.
    assert [c.id for c in ex.candidates] == [n.node.ref_doc_id for n in retrieved]
    assert [c.metadata["retrieval_score"] for c in ex.candidates] == pytest.approx(
        [n.score for n in retrieved], rel=1e-5
    )
    assert [ex.candidates[i].id for i in ex.metadata["picked"]] == [
        n.node.ref_doc_id for n in response.source_nodes
    ]
    picked_scores = [ex.candidates[i].metadata["rerank_score"] for i in ex.metadata["picked"]]
    assert picked_scores == pytest.approx([n.score for n in response.source_nodes], rel=1e-5)
    assert ex.candidates[ex.metadata["picked"][0]].id == queries[question]
    assert ex.metadata["reranker"] == "all-MiniLM-L6-v2"


def test_async_chat_and_streaming_runs_each_write_their_own_row(
    index: VectorStoreIndex, rerank: GumbelRerank, handler: QALogEventHandler, queries: dict[str, str]
) -> None:
    questions = list(queries)
    engine(index, rerank).query(questions[0])
    chat(index, rerank).chat(questions[1])
    chat(index, rerank, "condense_plus_context").chat(questions[2])
    streamed = engine(index, rerank, streaming=True).query(questions[1])
    assert "".join(streamed.response_gen) == ANSWER
    stream_chat = chat(index, rerank).stream_chat(questions[0])
    assert "".join(stream_chat.response_gen) == ANSWER

    async def run_async() -> None:
        qe = engine(index, rerank)
        await asyncio.gather(*(qe.aquery(q) for q in questions))
        await chat(index, rerank).achat(questions[2])
        astreamed = await engine(index, rerank, streaming=True).aquery(questions[0])
        assert "".join([t async for t in astreamed.async_response_gen()]) == ANSWER
        achat_stream = await chat(index, rerank).astream_chat(questions[1])
        assert "".join([t async for t in achat_stream.async_response_gen()]) == ANSWER

    asyncio.run(run_async())
    examples, _ = load_examples(handler.writer.path)
    expected = [0, 1, 2, 1, 0, 0, 1, 2, 2, 0, 1]
    assert sorted(ex.question for ex in examples) == sorted(questions[i] for i in expected)
    for ex in examples:  # each row holds its own question's nodes, however the runs interleaved
        assert ex.candidates[ex.metadata["picked"][0]].id == queries[ex.question], ex.question
        assert ex.answers == [ANSWER] and len(ex.candidates) == 4


def test_failed_and_unfinished_runs_write_nothing(
    index: VectorStoreIndex, rerank: GumbelRerank, handler: QALogEventHandler
) -> None:
    failing = index.as_query_engine(llm=FailingLLM(), similarity_top_k=4, node_postprocessors=[rerank])
    with pytest.raises(TimeoutError):
        failing.query("What is the capital of France?")
    with pytest.raises(TimeoutError):
        asyncio.run(failing.aquery("What is the capital of France?"))
    never_read = engine(index, rerank, streaming=True).query("What is the capital of France?")
    assert never_read.response_gen is not None
    assert not handler.writer.path.exists()
    engine(index, rerank).query("What is the capital of France?")
    assert len(load_examples(handler.writer.path)[0]) == 1


def test_without_a_reranker_the_retrieved_nodes_are_recorded(
    index: VectorStoreIndex, handler: QALogEventHandler
) -> None:
    question = "Who created the Python programming language?"
    response = engine(index, None).query(question)
    (ex,), _ = load_examples(handler.writer.path)
    assert [c.id for c in ex.candidates] == [n.node.ref_doc_id for n in response.source_nodes]
    assert "picked" not in ex.metadata and "reranker" not in ex.metadata


def test_an_event_handler_added_without_its_span_handler_says_so(
    index: VectorStoreIndex, rerank: GumbelRerank, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = QALogEventHandler(QALogWriter(tmp_path / "qa.jsonl"))
    root = get_dispatcher()
    root.add_event_handler(h)
    try:
        with caplog.at_level(logging.WARNING):
            engine(index, rerank).query("What is the capital of France?")
    finally:
        root.event_handlers = [x for x in root.event_handlers if x is not h]
    assert "add it with handler.register()" in caplog.text
    assert not (tmp_path / "qa.jsonl").exists()
    with pytest.raises(ValueError, match="pass redact to the QALogWriter itself"):
        QALogEventHandler(QALogWriter(tmp_path / "qa.jsonl"), redact=str.lower)


def test_capture_then_train_eval_and_serve_the_trained_model(
    index: VectorStoreIndex,
    rerank: GumbelRerank,
    handler: QALogEventHandler,
    documents: list[Document],
    queries: dict[str, str],
    tiny_bi_encoder_dir: Path,
    tiny_reader_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gumbel_rag.cli import main

    qe = engine(index, rerank)
    for i, question in enumerate(queries):
        with instrument_tags({"run_id": f"q{i}"}):
            qe.query(question)
    handler.writer.feedback("q0", answer="Paris", rating=5)
    ids = [d.doc_id for d in documents]
    dev = [
        QAExample(q, ["unused"], [Candidate(d.text, id=d.doc_id) for d in documents], gold=[ids.index(doc)])
        for q, doc in queries.items()
    ]
    write_qalog(dev, tmp_path / "dev.jsonl")

    out = tmp_path / "tuned"
    code = main([
        "train", "--data", str(handler.writer.path), "--reranker", str(tiny_bi_encoder_dir), "--reader",
        str(tiny_reader_dir), "--k", "2", "--batch-size", "1", "--grad-accum", "1", "--lr", "1e-3",
        "--max-document-tokens", "16", "--output", str(out), "--no-progress", "--mixed-precision", "no",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "loaded 3 examples, 0 skipped" in printed and "3 steps (0 skipped)" in printed
    assert main(["eval", "--data", str(tmp_path / "dev.jsonl"), "--reranker", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3

    tuned = GumbelRerank(model=str(out), top_n=2, device="cpu")
    response = engine(index, tuned).query("What is the capital of France?")
    examples, _ = load_examples(handler.writer.path)
    assert len(examples) == 4 and examples[0].answers == ["Paris"]
    last = examples[-1]
    assert [last.candidates[i].id for i in last.metadata["picked"]] == [
        n.node.ref_doc_id for n in response.source_nodes
    ]
    assert last.metadata["reranker"] == str(out)


def test_a_local_huggingface_llm_is_recorded_and_its_log_trains(
    index: VectorStoreIndex,
    rerank: GumbelRerank,
    handler: QALogEventHandler,
    queries: dict[str, str],
    tiny_bi_encoder_dir: Path,
    tiny_reader_dir: Path,
    tmp_path: Path,
) -> None:
    from llama_index.llms.huggingface import HuggingFaceLLM

    from gumbel_rag.cli import main
    from gumbel_rag.testing import build_tiny_reader

    # LlamaIndex fits its prompt to the model's positions: give the tiny model room for 4 passages.
    generator = build_tiny_reader(tmp_path / "generator", max_positions=4096)
    llm = HuggingFaceLLM(
        model_name=str(generator),
        tokenizer_name=str(generator),
        device_map="cpu",
        context_window=4096,
        max_new_tokens=4,
        generate_kwargs={"do_sample": False},
        # The tiny model's word-piece tokenizer returns token_type_ids, which a causal LM does not take.
        tokenizer_outputs_to_remove=["token_type_ids"],
    )
    qe = index.as_query_engine(llm=llm, similarity_top_k=4, node_postprocessors=[rerank])
    answers = [str(qe.query(q)) for q in queries]
    examples, summary = load_examples(handler.writer.path)
    assert not summary.skipped and [ex.question for ex in examples] == list(queries)
    # What the model generated is what the log holds as the answer (random words from a random model).
    assert [ex.answers for ex in examples] == [[a.strip()] for a in answers] and all(answers)
    code = main([
        "train", "--data", str(handler.writer.path), "--reranker", str(tiny_bi_encoder_dir), "--reader",
        str(tiny_reader_dir), "--k", "2", "--batch-size", "1", "--grad-accum", "1",
        "--max-document-tokens", "16", "--output", str(tmp_path / "tuned"), "--no-progress",
        "--mixed-precision", "no",
    ])  # fmt: skip
    assert code == 0 and (tmp_path / "tuned" / "model.safetensors").is_file()
