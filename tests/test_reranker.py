"""GumbelReranker: loading, scoring, ranking, saving, and bad input (tiny models, no downloads)."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from gumbel_rag import GumbelReranker, RankedDocument
from gumbel_rag.errors import ConfigError, ModelLoadError
from gumbel_rag.reranker import CHARS_PER_TOKEN

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
    # HF_HUB_OFFLINE=1 (conftest): a hub name not in the cache names the flag that stopped the download.
    offline = r"'no-such-org/no-such-model'.*downloads are off \(HF_HUB_OFFLINE"
    with pytest.raises(ModelLoadError, match=offline):
        GumbelReranker.from_pretrained("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="not a Hugging Face model directory"):
        GumbelReranker.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="no such directory"):
        GumbelReranker.from_pretrained(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        GumbelReranker.from_pretrained(tmp_path / "file.txt")


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
    with pytest.raises(ValueError, match="top_k"):
        bi.rerank("cat", DOCS, top_k=True)  # type: ignore[arg-type]


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


def _truncation_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "gumbel_rag.reranker" and "truncated" in r.getMessage()
    ]


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_truncation_is_reported_on_every_call(which: str, request, caplog) -> None:
    reranker: GumbelReranker = request.getfixturevalue(which)
    long_docs = ["word " * 400, "word " * 500, "short"]
    for _ in range(3):  # not once per process: every call that truncates says so
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gumbel_rag.reranker"):
            ranking = reranker.rerank("q", long_docs, top_k=1)
        assert _truncation_lines(caplog) == [
            f"2 of 3 inputs exceed the model's limit of {reranker.max_length} tokens and were truncated"
        ]
        # The count is the caller's too: over every input, also those top_k did not keep.
        assert ranking.truncated == 2 and len(ranking) == 1
    full = reranker.rerank("q", long_docs)
    assert {r.index: r.truncated for r in full} == {0: True, 1: True, 2: False}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gumbel_rag.reranker"):
        assert reranker.rerank("q", ["short"]).truncated == 0
    assert _truncation_lines(caplog) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Python warning either
        reranker.score("q", long_docs)


def test_cached_documents_still_count_as_truncated(tiny_bi_encoder_dir: Path) -> None:
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, cache_max_entries=10)
    docs = ["word " * 400, "short"]
    first = reranker.rerank("q", docs)
    second = reranker.rerank("another query", docs)
    assert reranker.embedding_cache is not None and reranker.embedding_cache.hits == 2
    assert first.truncated == second.truncated == 1
    assert [r.truncated for r in sorted(second, key=lambda r: r.index)] == [True, False]


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_huge_document_is_cut_before_tokenizing(which: str, request) -> None:
    reranker: GumbelReranker = request.getfixturevalue(which)
    bound = reranker.max_chars
    assert bound == reranker.max_length * CHARS_PER_TOKEN
    huge = "word " * 2_000_000  # 10M characters; only max_length tokens of it are used
    start = time.perf_counter()
    ranking = reranker.rerank("q", [huge, "short"])
    elapsed = time.perf_counter() - start
    # Tokenizing all 10M characters took seconds and GBs; the clipped text takes milliseconds.
    assert elapsed < 2.0, elapsed
    assert ranking.truncated == 1
    # The model sees the same tokens as for the text cut at the bound: same score.
    by_index = {r.index: r.score for r in ranking}
    assert by_index[0] == pytest.approx(reranker.score("q", [huge[:bound]])[0], rel=1e-5)
    # Training clips the same way (bounded memory), and scores the same pair the same.
    with torch.no_grad():
        train_scores, _ = reranker(["q"], [[huge]])
    assert train_scores[0, 0].item() == pytest.approx(by_index[0], rel=1e-4, abs=1e-4)


def test_text_at_the_character_bound_is_not_truncated(bi: GumbelReranker) -> None:
    bound = bi.max_chars
    assert bound is not None
    spaces = " " * bound + "x"  # few tokens, but over the character bound: cut, and counted
    assert bi.rerank("q", [spaces]).truncated == 1
    assert bi.rerank("q", [" " * bound]).truncated == 0


def test_scale_score_spreads_bi_encoder_cosines_and_sigmoids_logits(
    bi: GumbelReranker, cross: GumbelReranker
) -> None:
    raw = bi.rerank("cat", DOCS)
    scaled = bi.rerank("cat", DOCS, scale_score=True)
    assert [r.index for r in scaled] == [r.index for r in raw]
    for r, s in zip(raw, scaled, strict=True):
        assert s.score == pytest.approx((r.score * bi.temperature + 1) / 2, rel=1e-6)
        assert 0.0 <= s.score <= 1.0
    # Not saturated: sigmoid(cos / 0.05) would put distinct documents at 1.0, 0.99997, ...
    assert bi.unit_score(10.0) == pytest.approx(0.75) and bi.unit_score(-20.0) == 0.0
    raw = cross.rerank("cat", DOCS)
    scaled = cross.rerank("cat", DOCS, scale_score=True)
    for r, s in zip(raw, scaled, strict=True):
        assert s.score == pytest.approx(1 / (1 + math.exp(-r.score)), rel=1e-6)
    assert cross.unit_score(-1000.0) == 0.0 and cross.unit_score(1000.0) == 1.0
    # The threshold compares with the returned (scaled) score.
    cut = scaled[1].score
    assert [r.index for r in cross.rerank("cat", DOCS, score_threshold=cut, scale_score=True)] == [
        r.index for r in scaled if r.score >= cut
    ]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), True, "0.5"])
def test_bad_threshold_is_refused(bi: GumbelReranker, bad: object) -> None:
    with pytest.raises(ConfigError, match="score_threshold must be a finite number"):
        bi.rerank("q", ["a"], score_threshold=bad)  # type: ignore[arg-type]


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
