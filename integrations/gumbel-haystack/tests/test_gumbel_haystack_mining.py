"""Mining QA logs with real Haystack retrievers and pipelines, read back with gumbel_rag.data."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import ComponentDevice
from haystack_integrations.components.rankers.gumbel import (
    GumbelRanker,
    candidate_retriever,
    document_to_candidate,
    mine_qa_log,
)

from gumbel_rag.data import filter_trainable, load_examples

WHEN = dt.datetime(2024, 5, 1, 12, 0)
CORPUS = [
    Document(
        id="louvre", content="The Louvre in Paris is the most visited art museum.", meta={"title": "Louvre"}
    ),
    Document(
        id="berlin", content="Berlin is the capital of Germany.", meta={"title": "Berlin", "year": 1237}
    ),
    Document(id="nile", content="The Nile flows north into the Mediterranean Sea.", meta={"title": "Nile"}),
    Document(
        id="everest", content="Mount Everest is the highest mountain above sea level.", meta={"added": WHEN}
    ),
    Document(id="amazon", content="The Amazon river carries more water than any other river.", meta={}),
]
QA_ROWS = [
    {"id": "q1", "question": "What is the capital of Germany?", "answer": "Berlin"},
    {
        "id": "q2",
        "question": "Which river flows into the Mediterranean Sea?",
        "answers": ["Nile", "the Nile"],
    },
    {"id": "q3", "question": "What is the highest mountain?", "answer": "Mount Everest"},
    # Rows that already have candidates are kept as they are.
    {"id": "q4", "question": "Who painted it?", "answer": "Leonardo", "candidates": ["Leonardo painted it."]},
]


@pytest.fixture(scope="module")
def store() -> InMemoryDocumentStore:
    s = InMemoryDocumentStore(index=f"gumbel-mining-{uuid.uuid4()}")
    s.write_documents(CORPUS)
    return s


@pytest.fixture
def qa_log(tmp_path: Path) -> Path:
    path = tmp_path / "qa_log.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in QA_ROWS), encoding="utf8")
    return path


def test_mine_with_bm25_retriever_end_to_end(
    store: InMemoryDocumentStore, qa_log: Path, tmp_path: Path
) -> None:
    retriever = InMemoryBM25Retriever(document_store=store)
    out_path = tmp_path / "out" / "mined.jsonl"
    returned = mine_qa_log(qa_log, retriever, out_path, top_n=2, gold_from_answer=True)
    assert out_path.is_file()

    examples, summary = load_examples(out_path)
    assert summary.loaded == 4 and summary.n_skipped == 0
    assert examples == returned
    by_id = {doc.id: doc for doc in CORPUS}
    for ex in examples[:3]:
        expected = retriever.run(query=ex.question, top_k=2)["documents"]
        assert [c.id for c in ex.candidates] == [d.id for d in expected]
        for c in ex.candidates:
            doc = by_id[c.id]
            assert c.text == doc.content and c.title is None
            assert c.metadata == {
                k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in doc.meta.items()
            }
    q1, q2, q3, q4 = examples
    assert q1.candidates[0].id == "berlin" and q1.gold == [0]
    assert q2.candidates[0].id == "nile" and q2.gold == [0]
    assert q3.candidates[0].metadata == {"added": WHEN.isoformat()}  # gumbel_rag.data.files.json_safe
    assert [c.text for c in q4.candidates] == ["Leonardo painted it."] and q4.gold is None
    # What `gumbel-rag train --k 1` would train on: the rows with more than one candidate.
    trainable, skipped = filter_trainable(examples, k=1)
    assert [ex.id for ex in trainable] == ["q1", "q2", "q3"] and skipped.n_skipped == 1
    # The input QA log is untouched.
    assert [json.loads(line) for line in qa_log.read_text().splitlines()] == QA_ROWS


def test_gold_unknown_by_default(store: InMemoryDocumentStore, qa_log: Path, tmp_path: Path) -> None:
    examples, _ = load_examples(qa_log)
    # Already-loaded examples work as well as a path.
    mined = mine_qa_log(examples, InMemoryBM25Retriever(document_store=store), tmp_path / "m.jsonl", top_n=3)
    assert all(ex.gold is None for ex in mined)
    assert [len(ex.candidates) for ex in mined] == [3, 3, 3, 1]
    assert load_examples(tmp_path / "m.jsonl")[0] == mined


def test_nothing_retrieved_is_an_error(qa_log: Path, tmp_path: Path) -> None:
    empty = InMemoryBM25Retriever(document_store=InMemoryDocumentStore())
    with pytest.raises(ValueError, match="no documents for any of the 3 questions"):
        mine_qa_log(qa_log, empty, tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_mine_with_pipeline_reads_the_open_documents_output(
    store: InMemoryDocumentStore, qa_log: Path, tmp_path: Path, tiny_bi_encoder_dir: Path
) -> None:
    ranker = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"))
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=4))
    pipe.add_component("ranker", ranker)
    pipe.connect("retriever.documents", "ranker.documents")

    mined = mine_qa_log(qa_log, pipe, tmp_path / "mined.jsonl", top_n=2)
    question = QA_ROWS[0]["question"]
    # By default: the question goes to every open `query` input, top_n to the ranker's `top_k`.
    expected = pipe.run({"retriever": {"query": question}, "ranker": {"query": question, "top_k": 2}})
    assert [c.id for c in mined[0].candidates] == [d.id for d in expected["ranker"]["documents"]]

    # documents_output picks a component whose documents output is connected; top_k goes to that one.
    from_retriever = mine_qa_log(
        qa_log, pipe, tmp_path / "mined2.jsonl", top_n=3, documents_output="retriever.documents"
    )
    retrieved = InMemoryBM25Retriever(document_store=store).run(query=question, top_k=3)["documents"]
    assert [c.id for c in from_retriever[0].candidates] == [d.id for d in retrieved]


def test_pipeline_mapping_errors(store: InMemoryDocumentStore, qa_log: Path, tmp_path: Path) -> None:
    pipe = Pipeline()
    pipe.add_component("bm25_a", InMemoryBM25Retriever(document_store=store))
    pipe.add_component("bm25_b", InMemoryBM25Retriever(document_store=store))
    with pytest.raises(ValueError, match=r"found: bm25_a, bm25_b.*documents_output"):
        candidate_retriever(pipe)
    with pytest.raises(ValueError, match="not an open input"):
        candidate_retriever(pipe, documents_output="bm25_a", query_inputs=["bm25_a.question"])
    with pytest.raises(ValueError, match=r"component\.socket"):
        candidate_retriever(pipe, documents_output="bm25_a", query_inputs=["bm25_a"])
    with pytest.raises(ValueError, match="not in the pipeline"):
        candidate_retriever(pipe, documents_output="ranker")
    fetch = candidate_retriever(pipe, documents_output="bm25_b")
    assert [c.id for c in fetch("capital of Germany", 1)] == ["berlin"]


def test_bad_arguments(store: InMemoryDocumentStore, qa_log: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"run\(query=\.\.\., top_k=\.\.\.\)"):
        candidate_retriever(object())
    with pytest.raises(ValueError, match="Pipelines only"):
        candidate_retriever(InMemoryBM25Retriever(document_store=store), documents_output="x")
    with pytest.raises(ValueError, match="top_n must be a positive integer"):
        mine_qa_log(qa_log, InMemoryBM25Retriever(document_store=store), tmp_path / "x.jsonl", top_n=0)
    assert not (tmp_path / "x.jsonl").exists()


def test_candidate_text_follows_the_ranker_settings(store: InMemoryDocumentStore) -> None:
    ranker = GumbelRanker(
        meta_fields_to_embed=["title"], embedding_separator=": ", document_prefix="passage: "
    )
    doc = CORPUS[1]
    candidate = document_to_candidate(doc, ranker)
    assert candidate.text == "passage: Berlin: Berlin is the capital of Germany."
    assert ranker._prepare_text(doc) == candidate.text
    assert candidate.id == "berlin" and candidate.metadata == {"title": "Berlin", "year": 1237}
    assert document_to_candidate(Document(content=None)).text == ""
    retrieve = candidate_retriever(InMemoryBM25Retriever(document_store=store), ranker=ranker)
    assert retrieve("capital of Germany", 1) == [candidate]
