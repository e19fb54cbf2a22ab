"""Property tests: whatever documents go in come out intact, ranked, ties in input order."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from haystack import Document
from haystack.utils import ComponentDevice
from haystack_integrations.components.rankers.gumbel import GumbelRanker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# A few repeated texts so that ties actually occur.
texts = st.one_of(st.none(), st.sampled_from(["", "alpha", "beta gamma", "alpha"]), st.text(max_size=40))
meta = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(), st.text(max_size=10), st.booleans(), st.lists(st.integers(), max_size=3)),
    max_size=3,
)
doc_specs = st.lists(st.tuples(texts, meta), max_size=8)
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def ranker(tiny_bi_encoder_dir: Path) -> GumbelRanker:
    r = GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"), top_k=100)
    r.warm_up()
    return r


@SETTINGS
@given(
    specs=doc_specs,
    query=st.text(max_size=30),
    top_k=st.one_of(st.none(), st.integers(1, 10)),
    threshold=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_documents_out_are_documents_in_ranked(
    ranker: GumbelRanker, specs: list, query: str, top_k: int | None, threshold: float | None
) -> None:
    docs = [Document(id=f"doc-{i}", content=c, meta=m) for i, (c, m) in enumerate(specs)]
    snapshot = [d.to_dict() for d in docs]
    out = ranker.run(query=query, documents=docs, top_k=top_k, score_threshold=threshold)["documents"]
    assert [d.to_dict() for d in docs] == snapshot  # inputs untouched

    assert ranker.reranker is not None
    raw = ranker.reranker.score(query, [d.content or "" for d in docs]) if docs else []
    scaled = [ranker.reranker.unit_score(s) for s in raw]  # bi-encoder: (cosine + 1) / 2
    # Expected: stable sort by raw score (ties keep input order), then threshold, then top_k.
    order = sorted(range(len(docs)), key=lambda i: -raw[i])
    expected = [i for i in order if threshold is None or scaled[i] >= threshold][: top_k or ranker.top_k]
    assert [d.id for d in out] == [docs[i].id for i in expected]

    for d, i in zip(out, expected, strict=True):
        assert d.content == docs[i].content and d.meta == docs[i].meta
        assert d.score == pytest.approx(scaled[i])
    assert all(a.score >= b.score for a, b in itertools.pairwise(out))
    if top_k is None and threshold is None:
        assert sorted(d.id for d in out) == sorted(d.id for d in docs)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.sampled_from(["x", "y", "z"]), max_size=8), scores=st.data())
def test_duplicate_ids_collapse_to_the_highest_scoring_copy(ranker: GumbelRanker, ids: list, scores) -> None:
    docs = [
        Document(id=i, content=f"text {i}", meta={"pos": n}, score=scores.draw(st.floats(0, 1)))
        for n, i in enumerate(ids)
    ]
    out = ranker.run(query="text", documents=docs)["documents"]
    assert sorted(d.id for d in out) == sorted(set(ids))
    for d in out:
        copies = [c for c in docs if c.id == d.id]
        best = max(c.score for c in copies)
        assert d.meta["pos"] in [c.meta["pos"] for c in copies if c.score == best]
