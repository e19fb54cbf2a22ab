"""mine_qa_log: any LangChain retriever -> a QA log with candidates that gumbel-rag loads for training."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_gumbel import GumbelRerank, amine_qa_log, documents_to_candidates, mine_qa_log

from gumbel_rag.data import Candidate, QAExample, load_examples

QA_ROWS = [
    {"id": "q1", "question": "What is the capital of France?", "answer": "Paris"},
    {
        "id": "q2",
        "question": "Which river flows through northeastern Africa?",
        "answers": ["Nile", "the Nile"],
    },
    {"id": "q3", "question": "Who created the Python programming language?", "answer": "Guido van Rossum"},
    # Already has candidates: kept as it is, not retrieved for.
    {
        "id": "q4",
        "question": "Is it kept?",
        "answer": "yes",
        "candidates": [{"text": "yes it is", "id": "own"}],
    },
]


@pytest.fixture
def qa_log(tmp_path: Path) -> Path:
    path = tmp_path / "qa_log.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in QA_ROWS), encoding="utf8")
    return path


class ListRetriever(BaseRetriever):
    """A plain (non vector-store) retriever: returns the same documents for every query."""

    documents: list[Document]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [doc.model_copy(deep=True) for doc in self.documents]


def test_mine_with_a_vector_store_retriever_end_to_end(
    qa_log: Path, vector_store: InMemoryVectorStore, corpus: list[Document], tmp_path: Path
) -> None:
    out = tmp_path / "mined" / "train.jsonl"
    # The retriever's own k (1) is raised to top_n for mining.
    returned = mine_qa_log(qa_log, vector_store.as_retriever(search_kwargs={"k": 1}), out, top_n=3)
    examples, summary = load_examples(out)
    assert summary.loaded == 4 and summary.n_skipped == 0
    assert examples == returned
    by_id = {ex.id: ex for ex in examples}
    assert [ex.id for ex in examples] == ["q1", "q2", "q3", "q4"]
    for qid, best in [("q1", "paris"), ("q2", "nile"), ("q3", "python")]:
        ex = by_id[qid]
        assert len(ex.candidates) == 3
        assert ex.candidates[0].id == best
        assert ex.gold is None  # unlabelled unless gold_from_answer
    source = {doc.id: doc for doc in corpus}
    for cand in by_id["q1"].candidates:
        doc = source[cand.id]
        assert cand.text == doc.page_content
        assert cand.metadata == doc.metadata  # title, source, tags all kept
        assert cand.title is None  # training sees exactly what GumbelRerank scores
    assert by_id["q2"].answers == ["Nile", "the Nile"]
    assert by_id["q4"].candidates == [Candidate(text="yes it is", id="own")]


def test_gold_from_answer_and_async(qa_log: Path, vector_store: InMemoryVectorStore, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    mined = asyncio.run(
        amine_qa_log(qa_log, vector_store.as_retriever(), out, top_n=2, gold_from_answer=True)
    )
    examples, _ = load_examples(out)
    assert examples == mined
    q1 = next(ex for ex in examples if ex.id == "q1")
    assert [q1.candidates[i].id for i in q1.gold or []] == ["paris"]
    assert all(len(ex.candidates) == 2 for ex in examples if ex.id != "q4")


def test_any_retriever_is_truncated_and_metadata_made_json_safe(tmp_path: Path) -> None:
    docs = [
        Document(
            f"doc {i}", id=f"d{i}", metadata={"when": dt.date(2024, 1, i + 1), "n": i, "nested": {"a": [i]}}
        )
        for i in range(5)
    ]
    docs.append(Document("", metadata={"empty": True}))
    examples = [
        QAExample(question="anything?", answers=["x"]),
        QAExample(question="anything?", answers=["y"]),
    ]
    out = tmp_path / "mined.jsonl"
    mine_qa_log(examples, ListRetriever(documents=docs[:3]), out, top_n=2)
    loaded, _ = load_examples(out)
    assert [[c.id for c in ex.candidates] for ex in loaded] == [["d0", "d1"], ["d0", "d1"]]
    assert loaded[0].candidates[1].metadata == {"when": "2024-01-02", "n": 1, "nested": {"a": [1]}}

    # Any runnable that maps a question to documents works too; an empty page_content is kept as "".
    lcel_retriever = RunnableLambda(lambda question: [docs[-1], docs[4]])
    mine_qa_log(examples[:1], lcel_retriever, out, top_n=5)
    (ex,), _ = load_examples(out)
    assert [(c.text, c.id) for c in ex.candidates] == [("", None), ("doc 4", "d4")]
    assert ex.candidates[0].metadata == {"empty": True}
    assert docs[4].metadata["when"] == dt.date(2024, 1, 5)  # the caller's documents are untouched


def test_documents_to_candidates_keeps_id_and_metadata() -> None:
    (cand,) = documents_to_candidates([Document("text", id="7", metadata={"title": "T", "page": 3})])
    assert cand == Candidate(text="text", id="7", title=None, metadata={"title": "T", "page": 3})


def test_bad_inputs_fail_clearly(tmp_path: Path) -> None:
    examples = [QAExample(question="q?", answers=["a"])]
    with pytest.raises(ValueError, match="top_n must be a positive integer"):
        mine_qa_log(examples, ListRetriever(documents=[]), tmp_path / "o.jsonl", top_n=0)
    with pytest.raises(ValueError, match="returned no documents"):
        mine_qa_log(examples, ListRetriever(documents=[]), tmp_path / "o.jsonl")
    with pytest.raises(FileNotFoundError):
        mine_qa_log(tmp_path / "missing.jsonl", ListRetriever(documents=[]), tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_mined_hotpotqa_log_then_rerank(
    shared_data: Path, embeddings: Any, default_rerank: GumbelRerank, tmp_path: Path
) -> None:
    """Realistic loop: HotpotQA questions, their paragraphs in a vector store, mine, rerank the result."""
    examples, _ = load_examples(shared_data / "hotpotqa" / "dev_distractor_100.json")
    examples = examples[:3]
    store = InMemoryVectorStore(embedding=embeddings)
    seen: dict[str, Document] = {}
    for ex in examples:
        for cand in ex.candidates:
            # The opening of each paragraph is enough to retrieve by, and keeps the test fast.
            text = cand.content[:300]
            seen[cand.id or text] = Document(text, id=cand.id, metadata={"title": cand.title})
    store.add_documents(list(seen.values()))
    questions_only = [QAExample(question=ex.question, answers=ex.answers, id=ex.id) for ex in examples]

    out = tmp_path / "hotpot_mined.jsonl"
    mine_qa_log(questions_only, store.as_retriever(), out, top_n=5, gold_from_answer=True)
    mined, summary = load_examples(out)
    assert summary.loaded == 3
    hits = 0
    for original, ex in zip(examples, mined, strict=True):
        assert ex.id == original.id and len(ex.candidates) == 5
        assert all(c.metadata["title"] == c.id for c in ex.candidates)
        gold_titles = {original.candidates[i].title for i in original.gold or []}
        hits += bool(gold_titles & {c.id for c in ex.candidates})
    assert hits >= 2  # dense retrieval finds a supporting paragraph for (nearly) every question

    # The mined candidates feed straight back into the reranker.
    docs = [Document(c.text, id=c.id, metadata=c.metadata) for c in mined[0].candidates]
    reranked = default_rerank.model_copy(update={"top_n": None}).compress_documents(docs, mined[0].question)
    assert sorted(d.id for d in reranked) == sorted(d.id for d in docs)
