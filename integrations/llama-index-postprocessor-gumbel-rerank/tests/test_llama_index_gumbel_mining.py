"""mine_qa_log: QA log + a real LlamaIndex retriever -> a QA log that gumbel-rag's loader reads back."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.postprocessor.gumbel_rerank import (
    amine_qa_log,
    candidate_retriever,
    mine_qa_log,
    node_text,
    node_to_candidate,
)

from gumbel_rag.data import QAExample, filter_trainable, load_examples


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf8")
    return path


@pytest.mark.slow
def test_mine_qa_log_end_to_end(tmp_path: Path, documents: list[Document], encoder_embedding) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=encoder_embedding)
    nodes = {n.ref_doc_id: n for n in index.docstore.docs.values()}
    qa_log = write_jsonl(
        tmp_path / "log.jsonl",
        [
            {"id": "q1", "question": "What is the capital of France?", "answer": "Paris"},
            {"id": "q2", "question": "Who created the Python programming language?", "answers": ["Guido"]},
            {
                "id": "q3",
                "question": "Already labelled?",
                "answer": "yes",
                "candidates": [{"text": "yes it is", "id": "keep-me"}],
            },
        ],
    )
    out = tmp_path / "mined" / "train.jsonl"
    mined = mine_qa_log(qa_log, index.as_retriever(similarity_top_k=4), out, top_n=2, gold_from_answer=True)

    examples, summary = load_examples(out)
    assert summary.loaded == 3 and examples == mined
    q1, q2, q3 = examples
    assert [len(q1.candidates), len(q2.candidates)] == [2, 2]
    for example, answer_doc in ((q1, "paris"), (q2, "python")):
        top = example.candidates[0]
        node = nodes[answer_doc]
        # The id traces back to the user's document (not the random node UUID, which is kept as node_id).
        assert top.id == answer_doc == node.ref_doc_id and top.metadata["node_id"] == node.node_id
        assert top.text == node_text(node) == node.get_content(MetadataMode.EMBED)  # what GumbelRerank scores
        kept = {k: v for k, v in top.metadata.items() if k not in ("retrieval_score", "node_id")}
        assert kept == node.metadata
        assert 0 < top.metadata["retrieval_score"] <= 1
        assert example.gold == [0]  # the answer string occurs only in the right passage
    assert q3.candidates[0].id == "keep-me" and len(q3.candidates) == 1  # rows with candidates untouched
    trainable, _ = filter_trainable(examples, k=1)  # what `gumbel-rag train` keeps for a top-1 reranker
    assert [ex.id for ex in trainable] == ["q1", "q2"]


@pytest.mark.slow
def test_mine_from_loaded_examples_without_gold(tmp_path: Path, documents, encoder_embedding) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=encoder_embedding)
    examples = [QAExample(question="Which is the highest mountain on Earth?", answers=["Everest"])]
    out = tmp_path / "mined.jsonl"
    mined = mine_qa_log(examples, index.as_retriever(similarity_top_k=10), out, top_n=3)
    assert mined[0].gold is None  # unknown unless asked for
    [loaded], _ = load_examples(out)
    assert len(loaded.candidates) == 3
    assert loaded.candidates[0].metadata["title"] == "Everest"


def test_node_to_candidate_and_retriever_adapter() -> None:
    node = TextNode(text="", metadata={"title": "T"}, id_="n1")
    assert node_to_candidate(node).text == ""  # empty text stays empty, never the metadata header
    full = TextNode(text="body", metadata={"title": "T", "n": 1}, id_="n2")
    cand = node_to_candidate(NodeWithScore(node=full, score=0.5), MetadataMode.NONE)
    assert (cand.text, cand.id, cand.title) == ("body", "n2", None)
    assert cand.metadata == {"title": "T", "n": 1, "retrieval_score": 0.5}
    assert full.metadata == {"title": "T", "n": 1}  # the node itself is not touched
    assert cand.content == "body"  # exactly the text GumbelRerank(metadata_mode=NONE) scores


def test_candidate_retriever_caps_at_top_n(encoder_embedding, documents) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=encoder_embedding)
    fetch = candidate_retriever(index.as_retriever(similarity_top_k=5))
    got = fetch("capital city", 2)
    assert len(got) == 2 and all(c.id for c in got)


def test_top_n_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="top_n must be a positive integer"):
        mine_qa_log([], retriever=None, output_path=tmp_path / "x.jsonl", top_n=0)  # type: ignore[arg-type]


@pytest.mark.slow
def test_amine_qa_log_matches_sync(tmp_path: Path, documents: list[Document], encoder_embedding) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=encoder_embedding)
    retriever = index.as_retriever(similarity_top_k=3)
    qa_log = write_jsonl(
        tmp_path / "log.jsonl",
        [
            {"question": "What is the capital of France?", "answer": "Paris"},
            {"question": "Which is the highest mountain on Earth?", "answer": "Everest"},
            {"question": "What is the capital of France?", "answer": "Paris"},  # asked twice
        ],
    )
    sync = mine_qa_log(qa_log, retriever, tmp_path / "sync.jsonl", top_n=3)
    mined = asyncio.run(amine_qa_log(qa_log, retriever, tmp_path / "async.jsonl", top_n=3, max_concurrency=2))
    assert [[c.id for c in ex.candidates] for ex in mined] == [[c.id for c in ex.candidates] for ex in sync]
    loaded, _ = load_examples(tmp_path / "async.jsonl")
    assert loaded == mined and all(len(ex.candidates) == 3 for ex in loaded)


def test_small_similarity_top_k_warns(tmp_path: Path, documents: list[Document]) -> None:
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=4))
    examples = [QAExample(question="q?", answers=["a"])]
    with pytest.warns(UserWarning, match="similarity_top_k=2"):
        mined = mine_qa_log(examples, index.as_retriever(similarity_top_k=2), tmp_path / "m.jsonl", top_n=5)
    assert len(mined[0].candidates) == 2


def test_metadata_json_cannot_hold_is_written_as_text(tmp_path: Path) -> None:
    when = datetime.date(2024, 5, 17)
    node = TextNode(text="dated", id_="d1", metadata={"created": when, "path": Path("/a/b.txt"), "n": 3})
    cand = node_to_candidate(node)
    assert cand.metadata == {"created": "2024-05-17", "path": "/a/b.txt", "n": 3}
    assert node.metadata["created"] is when
