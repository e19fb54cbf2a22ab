"""Bounded work on unbounded input, reader side: question, answer and document sizes (issue 15)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from gumbel_rag.readers import DecoderReader, FiDReader, load_reader
from gumbel_rag.readers.bounds import (
    DEFAULT_MAX_ANSWER_TOKENS,
    DEFAULT_MAX_QUESTION_TOKENS,
    bounded_text,
    truncate_text,
)
from gumbel_rag.testing import save_default_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCE = "The river Lumo flows north through three small towns before it reaches the grey sea. "
GOLD = "The zorblax fruit is bright purple."


class CountingTokenizer:
    """A real tokenizer that records the length of every text it is asked to tokenize."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.lengths: list[int] = []

    def __call__(self, text: str, *args: Any, **kwargs: Any) -> Any:
        self.lengths.append(len(text))
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@pytest.fixture
def reader(tiny_reader_dir: Path) -> DecoderReader:
    return load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=32)


def tiny_fid(tmp_path: Path, **kwargs: Any) -> FiDReader:
    save_default_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
    )
    return FiDReader(T5ForConditionalGeneration(config), tokenizer, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def tokenizers(tiny_reader_dir: Path) -> list[Any]:
    """The tiny reader's word-piece tokenizer and, when installed, SmolLM2's byte-level BPE."""
    out = [AutoTokenizer.from_pretrained(str(tiny_reader_dir))]
    try:
        from gumbel_rag.readers.gguf import default_gguf_path

        gguf = default_gguf_path()
    except ModuleNotFoundError:
        return out
    out.append(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    return out


@pytest.mark.parametrize("budget", [1, 7, 64])
def test_bounded_text_keeps_the_tokens_of_the_whole_text(tokenizers: list[Any], budget: int) -> None:
    texts = [
        SENTENCE * 400,
        "word " + " " * 4_000 + SENTENCE * 50,  # a run of blanks a word-piece tokenizer drops
        "日本語のテキスト、" * 3000,  # no spaces, several bytes a character
        "a" * 300 + " " + SENTENCE * 100,  # a word longer than word-piece's 100 characters, then text
        "short text",
    ]
    for tokenizer in tokenizers:
        for text in texts:
            whole = tokenizer(text, add_special_tokens=False)["input_ids"]
            piece = bounded_text(tokenizer, text, budget)
            assert text.startswith(piece) and len(piece) < 40_000
            assert tokenizer(piece, add_special_tokens=False)["input_ids"][:budget] == whole[:budget]
        # One 10M-character word is cut hard (its tokens may differ at the cut, which lies past the bound).
        assert len(bounded_text(tokenizer, "x" * 10_000_000, budget)) <= 8 * (budget + 8) * 4**3 + 4096


def test_truncate_text_cuts_after_the_last_kept_token(tiny_reader_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_reader_dir))
    text = SENTENCE * 100
    kept, cut = truncate_text(tokenizer, text, 20)
    assert cut and text.startswith(kept)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer(kept, add_special_tokens=False)["input_ids"] == whole[:20]
    assert truncate_text(tokenizer, "a short question?", 20) == ("a short question?", False)


def test_a_ten_million_character_document_costs_what_a_short_one_does(reader: DecoderReader) -> None:
    huge = (SENTENCE * (10_000_000 // len(SENTENCE) + 1))[:10_000_000]
    spy = CountingTokenizer(reader.tokenizer)
    reader.tokenizer = spy
    start = time.perf_counter()
    batch = reader.prepare(["What color is the zorblax fruit?"], [[GOLD, huge]], ["purple"])
    elapsed = time.perf_counter() - start
    # Nothing near the document's length was ever tokenized: a few thousand characters at most.
    assert max(spy.lengths) < 10_000
    assert elapsed < 10  # tokenizing all of it takes ~10 s alone here; the bounded path takes well under 1 s
    reference = reader.tokenizer._tokenizer("Document: " + huge[:20_000], add_special_tokens=False)[
        "input_ids"
    ]
    assert reader.document_ids(huge) == reference[: 32 - len(reader._document_suffix_ids)] + list(
        reader._document_suffix_ids
    )
    assert batch.key_ids.shape[1] <= reader.prefix_length + 2 * 32
    assert reader.truncations.get("documents", 0) >= 1


def test_a_long_question_is_cut_counted_and_warned_once(
    reader: DecoderReader, caplog: pytest.LogCaptureFixture
) -> None:
    assert reader.max_question_tokens == DEFAULT_MAX_QUESTION_TOKENS
    question = "why " * 12_000 + "what color is the zorblax fruit?"
    spy = CountingTokenizer(reader.tokenizer)
    reader.tokenizer = spy
    with caplog.at_level(logging.WARNING):
        batch = reader.prepare([question, "short?"], [[GOLD], [GOLD]], ["purple", "purple"])
        reader.prepare([question], [[GOLD]], ["purple"])
    assert max(spy.lengths) < 10_000
    warnings = [r for r in caplog.records if "max_question_tokens" in r.getMessage()]
    assert len(warnings) == 1  # counted, not repeated
    assert reader.truncations["questions"] == 2
    q_tokens = (batch.qa_valid & ~batch.target_mask)[0].sum().item()
    template = len(reader.question_answer_ids("", "purple")[0])
    assert q_tokens <= DEFAULT_MAX_QUESTION_TOKENS + template + 2
    loss = reader.answer_loss(batch, torch.zeros(2, 1))
    assert torch.isfinite(loss).all()


def test_an_answer_over_the_bound_is_reported_and_refused(tiny_reader_dir: Path) -> None:
    reader = load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=16, max_answer_tokens=8)
    assert reader.skip_reason("q?", "bright purple") is None
    reason = reader.skip_reason("q?", "purple " * 20)
    assert reason is not None and "max_answer_tokens=8" in reason
    assert reader.skip_reason("q?", "   ") == "the answer is empty"
    # A 10M-character answer is judged from a bounded prefix.
    spy = CountingTokenizer(reader.tokenizer)
    reader.tokenizer = spy
    assert "max_answer_tokens" in reader.skip_reason("q?", "purple " * 1_500_000)
    assert max(spy.lengths) < 10_000
    with pytest.raises(ValueError, match=r"example 1 of the batch.*max_answer_tokens=8.*skip_reason"):
        reader.prepare(["a?", "b?"], [[GOLD], [GOLD]], ["purple", "purple " * 20])
    assert load_reader(str(tiny_reader_dir), device="cpu").max_answer_tokens == DEFAULT_MAX_ANSWER_TOKENS


def test_bound_options_are_validated(tiny_reader_dir: Path) -> None:
    for option, value in (("max_question_tokens", 0), ("max_answer_tokens", -3), ("max_document_tokens", 1)):
        with pytest.raises(ValueError, match=option):
            load_reader(str(tiny_reader_dir), device="cpu", **{option: value})
    reader = load_reader(str(tiny_reader_dir), device="cpu", max_question_tokens=5, max_answer_tokens=3)
    assert (reader.max_question_tokens, reader.max_answer_tokens) == (5, 3)


def test_fid_reader_bounds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reader = tiny_fid(tmp_path, max_document_tokens=16, max_answer_tokens=8)
    huge = SENTENCE * 100_000  # 8.6M characters
    question = "why " * 12_000 + "what color?"
    spy = CountingTokenizer(reader.tokenizer)
    reader.tokenizer = spy
    with caplog.at_level(logging.WARNING):
        batch = reader.prepare([question], [[GOLD, huge]], ["purple"])
    assert max(spy.lengths) < 10_000
    assert reader.truncations == {"questions": 1}
    assert batch.passage_ids.shape[1] <= 3 * (reader.max_question_tokens + 16 + 8)
    assert torch.isfinite(reader.answer_loss(batch, torch.zeros(1, 2))).all()
    tokenizer = reader.tokenizer._tokenizer
    budget = len(tokenizer("question: q context:")["input_ids"]) + 16
    reference = tokenizer(f"question: q context: {huge[:20_000]}", truncation=True, max_length=budget)
    assert reader.passage_ids("q", huge) == reference["input_ids"]
    assert "max_answer_tokens=8" in reader.skip_reason("q?", "purple " * 30)
    with pytest.raises(ValueError, match="max_answer_tokens=8"):
        reader.prepare(["q?"], [[GOLD]], ["purple " * 30])


def test_training_leaves_out_answers_over_the_bound(tiny_reader_dir: Path) -> None:
    from gumbel_rag.data import Candidate, QAExample
    from gumbel_rag.losses import GumbelRerankLoss
    from gumbel_rag.trainer import trainable_examples

    reader = load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=16, max_answer_tokens=8)
    loss = GumbelRerankLoss(reader, k=1)
    docs = [Candidate("purple is the colour"), Candidate("green grass")]
    rows = [
        QAExample("q1?", ["purple"], docs, id="short"),
        QAExample("q2?", ["purple " * 20], docs, id="long"),
    ]
    assert loss.skip_reason(rows[0]) is None
    assert "max_answer_tokens=8" in loss.skip_reason(rows[1])
    kept, dropped = trainable_examples(loss, rows)
    assert [ex.id for ex in kept] == ["short"] and dropped.n_skipped == 1
