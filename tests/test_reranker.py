"""GumbelReranker: loading, scoring, ranking, saving, and bad input (tiny models, no downloads)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from gumbel_rag import GumbelReranker, RankedDocument

DOCS = ["the cat sat on the mat", "", "a long story " * 10, "paris is in france", "the cat sat on the mat"]


@pytest.fixture(scope="module")
def bi(tiny_bi_encoder_dir: Path) -> GumbelReranker:
    return GumbelReranker.from_pretrained(tiny_bi_encoder_dir, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def cross(tiny_cross_encoder_dir: Path) -> GumbelReranker:
    return GumbelReranker.from_pretrained(tiny_cross_encoder_dir, device="cpu", batch_size=2)


def test_kind_auto_detection(
    bi: GumbelReranker, cross: GumbelReranker, tiny_two_logit_cross_encoder_dir
) -> None:
    assert bi.kind == "bi-encoder"
    assert cross.kind == "cross-encoder"
    assert GumbelReranker.from_pretrained(tiny_two_logit_cross_encoder_dir).kind == "cross-encoder"


def test_wrong_kind_is_a_clear_error(tiny_bi_encoder_dir: Path, tiny_cross_encoder_dir: Path) -> None:
    with pytest.raises(ValueError, match="looks like a bi-encoder"):
        GumbelReranker.from_pretrained(tiny_bi_encoder_dir, kind="cross-encoder")
    with pytest.raises(ValueError, match="looks like a cross-encoder"):
        GumbelReranker.from_pretrained(tiny_cross_encoder_dir, kind="bi-encoder")
    with pytest.raises(ValueError, match="kind must be"):
        GumbelReranker.from_pretrained(tiny_cross_encoder_dir, kind="colbert")  # type: ignore[arg-type]


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        GumbelReranker.from_pretrained("no-such-org/no-such-model")
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        GumbelReranker.from_pretrained(tmp_path)


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_scores_match_stock_sentence_transformers(which: str, request: pytest.FixtureRequest) -> None:
    reranker: GumbelReranker = request.getfixturevalue(which)
    query = "where is the cat"
    ours = torch.tensor(reranker.score(query, DOCS))
    if which == "bi":
        st = SentenceTransformer(str(request.getfixturevalue("tiny_bi_encoder_dir")), device="cpu")
        q = st.encode([query], convert_to_tensor=True, normalize_embeddings=True)
        d = st.encode(DOCS, convert_to_tensor=True, normalize_embeddings=True)
        stock = (q @ d.T)[0] / reranker.temperature
    else:
        ce = CrossEncoder(str(request.getfixturevalue("tiny_cross_encoder_dir")), device="cpu")
        stock = torch.as_tensor(ce.predict([(query, d) for d in DOCS], activation_fn=torch.nn.Identity()))
    torch.testing.assert_close(ours, stock.float(), atol=1e-4, rtol=1e-4)


def test_two_logit_cross_encoder_scores_log_odds(tiny_two_logit_cross_encoder_dir: Path) -> None:
    reranker = GumbelReranker.from_pretrained(tiny_two_logit_cross_encoder_dir)
    ce = CrossEncoder(str(tiny_two_logit_cross_encoder_dir), device="cpu")
    logits = torch.as_tensor(ce.predict([("q", d) for d in DOCS], activation_fn=torch.nn.Identity()))
    torch.testing.assert_close(
        torch.tensor(reranker.score("q", DOCS)), logits[:, 1] - logits[:, 0], atol=1e-4, rtol=1e-5
    )


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_rerank_keeps_every_document_once_sorted_with_stable_ties(which: str, request) -> None:
    reranker: GumbelReranker = request.getfixturevalue(which)
    ranked = reranker.rerank("cat", DOCS)
    assert sorted(r.index for r in ranked) == list(range(len(DOCS)))
    assert all(isinstance(r, RankedDocument) and r.text == DOCS[r.index] for r in ranked)
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    # The duplicate documents 0 and 4 score the same and keep input order.
    pos = {r.index: p for p, r in enumerate(ranked)}
    assert pos[0] < pos[4]


def test_top_k_and_threshold(bi: GumbelReranker) -> None:
    full = bi.rerank("cat", DOCS)
    assert bi.rerank("cat", DOCS, top_k=2) == full[:2]
    assert bi.rerank("cat", DOCS, top_k=100) == full
    cut = full[2].score
    assert bi.rerank("cat", DOCS, score_threshold=cut) == [r for r in full if r.score >= cut]
    with pytest.raises(ValueError, match="top_k"):
        bi.rerank("cat", DOCS, top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        bi.rerank("cat", DOCS, top_k=-3)


def test_bad_input(bi: GumbelReranker) -> None:
    assert bi.rerank("q", []) == []
    assert bi.score("q", []) == []
    with pytest.raises(TypeError, match="index 2"):
        bi.rerank("q", ["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="index 0"):
        bi.score("q", [None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single string"):
        bi.score("q", "abc")
    with pytest.raises(TypeError, match="query"):
        bi.score(42, ["a"])  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_long_documents_warn_once_per_call(which: str, request) -> None:
    reranker: GumbelReranker = request.getfixturevalue(which)
    long_docs = ["word " * 400, "word " * 500, "short"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reranker.score("q", long_docs)
    relevant = [w for w in caught if "truncated" in str(w.message)]
    assert len(relevant) == 1
    assert "2 of 3" in str(relevant[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reranker.score("q", ["short"])


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_score_batch_equals_single_calls_and_forward(which: str, request) -> None:
    reranker: GumbelReranker = request.getfixturevalue(which)
    queries = ["cat", "france"]
    docs = [DOCS, DOCS[:2]]
    batch = reranker.score_batch(queries, docs)
    assert [len(b) for b in batch] == [5, 2]
    for q, d, b in zip(queries, docs, batch, strict=True):
        torch.testing.assert_close(torch.tensor(b), torch.tensor(reranker.score(q, d)), atol=1e-5, rtol=1e-5)
    scores, valid = reranker(queries, docs)
    assert scores.requires_grad
    assert valid.tolist() == [[True] * 5, [True, True, False, False, False]]
    torch.testing.assert_close(scores[0].detach(), torch.tensor(batch[0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[1, :2].detach(), torch.tensor(batch[1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_differentiable_path_reaches_the_weights(which: str, request) -> None:
    reranker: GumbelReranker = request.getfixturevalue(which)
    reranker.zero_grad()
    scores, valid = reranker(["cat"], [DOCS])
    scores[valid].sum().backward()
    grads = [p.grad for p in reranker.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    reranker.zero_grad()


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_save_pretrained_roundtrip_and_stock_loading(which: str, request, tmp_path: Path) -> None:
    reranker: GumbelReranker = request.getfixturevalue(which)
    reranker.save_pretrained(tmp_path)
    assert list(tmp_path.rglob("*.safetensors"))
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    assert json.loads((tmp_path / "gumbel_rag.json").read_text())["kind"] == reranker.kind
    again = GumbelReranker.from_pretrained(tmp_path)
    assert again.kind == reranker.kind
    torch.testing.assert_close(
        torch.tensor(again.score("cat", DOCS)),
        torch.tensor(reranker.score("cat", DOCS)),
        atol=1e-5,
        rtol=1e-5,
    )
    if which == "bi":
        st = SentenceTransformer(str(tmp_path), device="cpu")
        emb = st.encode(["cat", *DOCS], convert_to_tensor=True, normalize_embeddings=True)
        stock = (emb[0] @ emb[1:].T) / reranker.temperature
    else:
        ce = CrossEncoder(str(tmp_path), device="cpu")
        stock = torch.as_tensor(ce.predict([("cat", d) for d in DOCS], activation_fn=torch.nn.Identity()))
    torch.testing.assert_close(torch.tensor(reranker.score("cat", DOCS)), stock.float(), atol=1e-4, rtol=1e-5)


def test_temperature_is_saved(tiny_bi_encoder_dir: Path, tmp_path: Path) -> None:
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, temperature=0.1)
    reranker.save_pretrained(tmp_path)
    assert GumbelReranker.from_pretrained(tmp_path).temperature == 0.1


def test_max_length_and_batch_size_validation(tiny_bi_encoder_dir: Path) -> None:
    assert GumbelReranker.from_pretrained(tiny_bi_encoder_dir, max_length=16).max_length == 16
    with pytest.raises(ValueError, match="batch_size"):
        GumbelReranker.from_pretrained(tiny_bi_encoder_dir, batch_size=0)


def test_encode_is_normalised_and_bi_encoder_only(bi: GumbelReranker, cross: GumbelReranker) -> None:
    emb = bi.encode(["a", "bb", ""])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    with pytest.raises(TypeError, match="bi-encoder"):
        cross.encode(["a"])


@pytest.mark.slow
def test_default_model_ranks_relevant_passage_first() -> None:
    reranker = GumbelReranker.from_pretrained()
    assert reranker.kind == "bi-encoder"
    ranked = reranker.rerank(
        "What is the capital of France?",
        [
            "Bananas are a good source of potassium.",
            "Paris is the capital and largest city of France.",
            "The Pacific is the largest ocean on Earth.",
        ],
    )
    assert ranked[0].index == 1
    assert ranked[0].score > ranked[1].score + 1.0
