"""Property tests: whatever goes in comes out (minus top_n / threshold), sorted, ties stable, intact."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.documents import Document
from langchain_gumbel import GumbelRerank

from gumbel_rag import GumbelReranker

# Surrogates cannot be encoded to UTF-8 and so never reach a tokenizer from a real document.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=5,
)
METADATA = st.dictionaries(TEXT.filter(lambda k: k != "relevance_score"), JSON_VALUE, max_size=3)
DOCS = st.lists(st.tuples(TEXT, METADATA), max_size=8)


def _index(doc: Document) -> int:
    return int(str(doc.id).split("-")[1])


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The tiny model's ops take microseconds; with other jobs on the CPUs, intra-op thread hand-offs
    # made each call ~100x slower. One thread keeps this many-example test fast; restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_rerank(tiny_bi_encoder_dir: Path) -> GumbelRerank:
    return GumbelRerank(model=str(tiny_bi_encoder_dir), device="cpu")


@pytest.fixture(scope="module")
def tiny_core(tiny_bi_encoder_dir: Path) -> GumbelReranker:
    return GumbelReranker.from_pretrained(tiny_bi_encoder_dir, device="cpu")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    items=DOCS,
    query=TEXT,
    top_n=st.none() | st.integers(min_value=1, max_value=10),
    threshold_pick=st.none() | st.integers(min_value=0, max_value=7),
    duplicate=st.booleans(),
)
def test_documents_in_documents_out(
    tiny_rerank: GumbelRerank,
    tiny_core: GumbelReranker,
    items: list[tuple[str, dict[str, Any]]],
    query: str,
    top_n: int | None,
    threshold_pick: int | None,
    duplicate: bool,
) -> None:
    if duplicate and items:
        # Identical texts score identically, which exercises the tie order.
        items = [*items, (items[0][0], {"dup": True})]
    docs = [Document(page_content=text, metadata=meta, id=f"doc-{i}") for i, (text, meta) in enumerate(items)]
    snapshot = [doc.model_dump() for doc in docs]
    scores = tiny_core.score(query, [doc.page_content for doc in docs])
    threshold = None
    if threshold_pick is not None and docs:
        threshold = scores[threshold_pick % len(docs)]

    rerank = tiny_rerank.model_copy(update={"top_n": top_n, "score_threshold": threshold})
    out = rerank.compress_documents(docs, query)

    expected = sorted(range(len(docs)), key=lambda i: -scores[i])
    if threshold is not None:
        expected = [i for i in expected if scores[i] >= threshold]
    if top_n is not None:
        expected = expected[:top_n]
    assert [doc.id for doc in out] == [f"doc-{i}" for i in expected]

    got_scores = [doc.metadata["relevance_score"] for doc in out]
    assert all(isinstance(s, float) for s in got_scores)
    for prev, doc in itertools.pairwise(out):
        assert prev.metadata["relevance_score"] >= doc.metadata["relevance_score"]
        if prev.metadata["relevance_score"] == doc.metadata["relevance_score"]:
            assert _index(prev) < _index(doc)  # ties keep input order
    for doc in out:
        original = docs[_index(doc)]
        assert doc.page_content == original.page_content
        assert {k: v for k, v in doc.metadata.items() if k != "relevance_score"} == original.metadata
        assert doc.metadata["relevance_score"] == pytest.approx(scores[_index(doc)], rel=1e-5, abs=1e-4)
    assert [doc.model_dump() for doc in docs] == snapshot
