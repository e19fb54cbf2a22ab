"""QALogCallbackHandler in real LangChain chains: a vector store, GumbelRerank, a chat model, every way
to run a chain, and the captured log trained on by `gumbel-rag train` with no conversion step.

No LLM service runs here, so the language model is LangChain's own FakeListChatModel / FakeListLLM:
the answers are canned, everything else (retrieval, reranking, callbacks, files) is real.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel, FakeListLLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_gumbel import GumbelRerank, QALogCallbackHandler

from gumbel_rag.data import QALogWriter, load_examples, write_qalog
from gumbel_rag.data.schema import Candidate, QAExample

# question -> (the corpus document that answers it, the answer)
QUESTIONS = {
    "What is the capital of France?": ("paris", "Paris"),
    "Which river flows through northeastern Africa?": ("nile", "the Nile"),
    "Who created the Python programming language?": ("python", "Guido van Rossum"),
    "What is the highest mountain on Earth?": ("everest", "Mount Everest"),
}
PROMPT = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")


def fmt(docs: list[Document]) -> str:
    return "\n".join(d.page_content for d in docs)


def rag_chain(retriever: Runnable, llm: Runnable | None = None) -> Runnable:
    llm = llm or FakeListChatModel(responses=["Paris"])
    return {"context": retriever | fmt, "question": RunnablePassthrough()} | PROMPT | llm | StrOutputParser()


@pytest.fixture
def rerank(default_rerank: GumbelRerank) -> GumbelRerank:
    return default_rerank.model_copy(update={"top_n": 2})


@pytest.fixture
def compression(rerank: GumbelRerank, vector_store: InMemoryVectorStore) -> ContextualCompressionRetriever:
    base = vector_store.as_retriever(search_kwargs={"k": 4})
    return ContextualCompressionRetriever(base_compressor=rerank, base_retriever=base)


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]


def test_a_run_records_the_first_stage_the_picks_and_the_answer(
    compression: ContextualCompressionRetriever, vector_store: InMemoryVectorStore, tmp_path: Path
) -> None:
    handler = QALogCallbackHandler(tmp_path / "qa.jsonl")
    assert isinstance(handler, BaseCallbackHandler)
    run_id = uuid.uuid4()
    question = "What is the capital of France?"
    answer = rag_chain(compression).invoke(question, config={"callbacks": [handler], "run_id": run_id})
    assert answer == "Paris"
    (ex,), summary = load_examples(tmp_path / "qa.jsonl")
    assert not summary.skipped
    assert ex.id == str(run_id) and ex.metadata["run_id"] == str(run_id)
    assert ex.question == question and ex.answers == ["Paris"]
    # Every document the first stage returned, in its order, with its metadata: what the reranker chose from.
    first_stage = vector_store.similarity_search(question, k=4)
    assert [c.id for c in ex.candidates] == [d.id for d in first_stage]
    assert [c.text for c in ex.candidates] == [d.page_content for d in first_stage]
    assert ex.candidates[0].metadata["source"] == first_stage[0].metadata["source"]
    # The reranker's picks and scores: the documents GumbelRerank returned.
    picked = compression.invoke(question)
    assert [ex.candidates[i].id for i in ex.metadata["picked"]] == [d.id for d in picked]
    scores = [ex.candidates[i].metadata["rerank_score"] for i in ex.metadata["picked"]]
    assert scores == pytest.approx([d.metadata["relevance_score"] for d in picked], rel=1e-5)
    assert sum("rerank_score" in c.metadata for c in ex.candidates) == 2


def test_invoke_batch_async_and_streaming_each_write_their_own_row(
    compression: ContextualCompressionRetriever, tmp_path: Path
) -> None:
    handler = QALogCallbackHandler(tmp_path / "qa.jsonl")
    chain = rag_chain(compression)
    config = {"callbacks": [handler]}
    questions = list(QUESTIONS)
    chain.invoke(questions[0], config=config)
    chain.batch(questions[:3], config=config)
    assert "".join(chain.stream(questions[1], config=config)) == "Paris"

    async def run_async() -> None:
        await chain.ainvoke(questions[2], config=config)
        await chain.abatch(questions[2:], config=config)
        assert "".join([c async for c in chain.astream(questions[3], config=config)]) == "Paris"

    asyncio.run(run_async())
    examples, _ = load_examples(tmp_path / "qa.jsonl")
    expected = [0, 0, 1, 2, 1, 2, 2, 3, 3]
    assert sorted(ex.question for ex in examples) == sorted(questions[i] for i in expected)
    assert len({ex.id for ex in examples}) == len(expected)
    for ex in examples:  # each row holds its own question's documents, however the runs interleaved
        best = ex.candidates[ex.metadata["picked"][0]]
        assert best.id == QUESTIONS[ex.question][0]
        assert ex.answers == ["Paris"] and len(ex.candidates) == 4


def test_answers_from_messages_dicts_and_an_output_key(
    compression: ContextualCompressionRetriever, tmp_path: Path
) -> None:
    question = "What is the capital of France?"
    chat = FakeListChatModel(responses=["Paris, from a message"])
    message_chain = {"context": compression | fmt, "question": RunnablePassthrough()} | PROMPT | chat
    handler = QALogCallbackHandler(tmp_path / "qa.jsonl")
    message_chain.invoke(question, config={"callbacks": [handler]})

    llm = FakeListLLM(responses=["Paris, from a dict"])
    dict_chain = {
        "context": (lambda x: x["question"]) | compression | fmt,
        "question": lambda x: x["question"],
    } | RunnablePassthrough.assign(answer=PromptTemplate.from_template("{context} {question}") | llm)
    dict_chain.invoke({"question": question}, config={"callbacks": [handler]})

    keyed = dict_chain | (lambda out: {"reply": out["answer"], "answer": "not this one"})
    own_key = QALogCallbackHandler(QALogWriter(tmp_path / "qa.jsonl"), output_key="reply")
    llm.i = 0
    keyed.invoke({"question": question}, config={"callbacks": [own_key]})
    answers = [r["answers"] for r in rows(tmp_path / "qa.jsonl")]
    assert answers == [["Paris, from a message"], ["Paris, from a dict"], ["Paris, from a dict"]]


def test_without_a_reranker_and_with_a_compressor_called_in_the_chain(
    vector_store: InMemoryVectorStore, rerank: GumbelRerank, tmp_path: Path
) -> None:
    question = "Which river flows through northeastern Africa?"
    retriever = vector_store.as_retriever(search_kwargs={"k": 3})
    handler = QALogCallbackHandler(tmp_path / "qa.jsonl")
    rag_chain(retriever).invoke(question, config={"callbacks": [handler]})

    def reranked(docs: list[Document]) -> list[Document]:
        return list(rerank.compress_documents(docs, question))

    rag_chain(retriever | RunnableLambda(reranked)).invoke(question, config={"callbacks": [handler]})
    plain, lcel = load_examples(tmp_path / "qa.jsonl")[0]
    assert [c.id for c in plain.candidates] == [d.id for d in retriever.invoke(question)]
    assert "picked" not in plain.metadata
    assert [c.id for c in lcel.candidates] == [c.id for c in plain.candidates]
    assert [lcel.candidates[i].id for i in lcel.metadata["picked"]] == [
        d.id for d in reranked(retriever.invoke(question))
    ]


def test_a_failed_run_writes_nothing_and_options_reach_the_writer(
    compression: ContextualCompressionRetriever, tmp_path: Path
) -> None:
    def broken_llm(prompt: Any) -> str:
        raise TimeoutError("the LLM timed out")

    path = tmp_path / "qa.jsonl"
    handler = QALogCallbackHandler(path, redact=lambda text: text.replace("France", "[country]"))
    with pytest.raises(TimeoutError):
        rag_chain(compression, RunnableLambda(broken_llm)).invoke(
            "What is the capital of France?", config={"callbacks": [handler]}
        )
    assert not path.exists()
    # A retriever invoked on its own is no answered question: nothing written either.
    compression.invoke("What is the capital of France?", config={"callbacks": [handler]})
    assert not path.exists()
    rag_chain(compression).invoke("What is the capital of France?", config={"callbacks": [handler]})
    (row,) = rows(path)
    assert row["question"] == "What is the capital of [country]?" and "France" not in json.dumps(row)
    with pytest.raises(ValueError, match="pass sample_rate to the QALogWriter itself"):
        QALogCallbackHandler(QALogWriter(path), sample_rate=0.5)


def test_capture_then_train_eval_and_serve_the_trained_model(
    compression: ContextualCompressionRetriever,
    vector_store: InMemoryVectorStore,
    corpus: list[Document],
    tiny_bi_encoder_dir: Path,
    tiny_reader_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gumbel_rag.cli import main

    log = tmp_path / "logs" / "qa.jsonl"
    handler = QALogCallbackHandler(log)
    answers = [answer for _, answer in QUESTIONS.values()]
    chain = rag_chain(compression, FakeListChatModel(responses=answers))
    run_ids = [uuid.uuid4() for _ in QUESTIONS]
    for question, run_id in zip(QUESTIONS, run_ids, strict=True):
        chain.invoke(question, config={"callbacks": [handler], "run_id": run_id})
    handler.writer.feedback(str(run_ids[0]), answer="Paris, France", rating=5)

    by_id = {d.id: d for d in corpus}
    dev = [
        QAExample(
            question=q,
            answers=[a],
            candidates=[Candidate(d.page_content, id=d.id) for d in corpus],
            gold=[[d.id for d in corpus].index(doc_id)],
        )
        for q, (doc_id, a) in QUESTIONS.items()
    ]
    assert by_id["paris"].page_content in dev[0].candidates[dev[0].gold[0]].text
    write_qalog(dev, tmp_path / "dev.jsonl")

    out = tmp_path / "tuned"
    code = main([
        "train", "--data", str(log.parent), "--reranker", str(tiny_bi_encoder_dir), "--reader",
        str(tiny_reader_dir), "--k", "2", "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-3",
        "--max-document-tokens", "16", "--output", str(out), "--no-progress", "--mixed-precision", "no",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "loaded 4 examples, 0 skipped" in printed and "2 steps (0 skipped)" in printed
    assert main(["eval", "--data", str(tmp_path / "dev.jsonl"), "--reranker", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 4 and 0.0 <= metrics["recall@2"] <= 1.0

    # The trained model back in the same application, still captured.
    tuned = ContextualCompressionRetriever(
        base_compressor=GumbelRerank(model=str(out), top_n=2, device="cpu"),
        base_retriever=vector_store.as_retriever(search_kwargs={"k": 4}),
    )
    served = rag_chain(tuned, FakeListChatModel(responses=["Paris"]))
    assert served.invoke("What is the capital of France?", config={"callbacks": [handler]}) == "Paris"
    examples, _ = load_examples(log)
    assert len(examples) == 5 and examples[0].answers == ["Paris, France"]
    last = examples[-1]
    picked = tuned.invoke("What is the capital of France?")
    assert [last.candidates[i].id for i in last.metadata["picked"]] == [d.id for d in picked]
