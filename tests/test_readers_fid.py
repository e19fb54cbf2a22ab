"""FiDReader: Fusion-in-Decoder with a masked cross-attention, on a tiny random T5."""

from __future__ import annotations

import os
import re

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from gumbel_rag.readers import FiDBatch, FiDReader
from gumbel_rag.readers.fid import PAD, QUESTION_ONLY, cross_attention_bias

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIALS = ["<pad>", "</s>", "<unk>"]
CORPUS = [
    "question : context :",
    "the zorblax fruit is bright purple and grows on tall trees in the valley",
    "the eiffel tower is in paris , a city in france with many old bridges",
    "mount kelvar is the highest peak of the northern range and it is covered in snow",
    "river lumo flows north through three small towns before it reaches the sea",
    "what color is the zorblax fruit ? where is the eiffel tower ? purple paris snow",
]
QUESTION = "what color is the zorblax fruit ?"
ANSWER = "bright purple"
DOCS = [
    "the zorblax fruit is bright purple and grows on tall trees in the valley",
    "the eiffel tower is in paris",
    "mount kelvar is the highest peak of the northern range and it is covered in snow all year",
    "river lumo flows north",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level T5-style tokenizer (appends </s>) over CORPUS, built offline."""
    words = sorted({w for line in CORPUS for w in re.findall(r"\w+|[^\w\s]+", line)})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )


def make_reader(dtype: torch.dtype = torch.float32, max_document_tokens: int = 12) -> FiDReader:
    tok = make_tokenizer()
    config = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        initializer_factor=3.0,  # peaky attention, so the mask clearly matters
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config).to(dtype)
    return FiDReader(model, tok, device="cpu", max_document_tokens=max_document_tokens)


def hard_log_mask(n: int, keep: set[int]) -> torch.Tensor:
    return torch.tensor([[0.0 if i in keep else float("-inf") for i in range(n)]])


def test_hard_mask_equals_reader_given_only_the_subset() -> None:
    reader = make_reader()
    batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
    full = reader.answer_loss(batch, torch.zeros(1, len(DOCS)))
    for keep in ({0, 2}, {3}, set()):
        masked = reader.answer_loss(batch, hard_log_mask(len(DOCS), keep))
        alone = reader.loss([QUESTION], [[DOCS[i] for i in sorted(keep)]], [ANSWER])
        torch.testing.assert_close(masked, alone, atol=1e-4, rtol=1e-5)
        assert (masked - full).abs().item() > 1e-3


def test_gradient_matches_finite_differences() -> None:
    reader = make_reader(torch.float64)
    batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
    base = torch.tensor([[-0.3, float("-inf"), -1.1, -0.05]], dtype=torch.float64)
    log_mask = base.clone().requires_grad_(True)
    reader.answer_loss(batch, log_mask).sum().backward()
    grad = log_mask.grad[0]
    assert torch.isfinite(grad).all() and grad[1].item() == 0.0
    # T5LayerNorm's variance is float32 even in a float64 model, so a tiny step drowns in round-off.
    eps = 1e-2
    for i in (0, 2, 3):
        up, down = base.clone(), base.clone()
        up[0, i] += eps
        down[0, i] -= eps
        with torch.no_grad():
            fd = (reader.answer_loss(batch, up) - reader.answer_loss(batch, down)).item() / (2 * eps)
        assert abs(fd) > 1e-4
        assert grad[i].item() == pytest.approx(fd, rel=1e-3, abs=1e-4)


def padded_batch_inputs() -> tuple[list[str], list[list[str]], list[str]]:
    questions = [QUESTION, "where is the eiffel tower ?", "what color is the zorblax fruit ?"]
    documents = [DOCS, [DOCS[1], DOCS[3]], []]
    answers = [ANSWER, "paris , france", "purple"]
    return questions, documents, answers


def test_cached_cross_attention_equals_single_pass() -> None:
    reader = make_reader()
    questions, documents, answers = padded_batch_inputs()
    batch = reader.prepare(questions, documents, answers)
    base = torch.tensor([[-0.2, -2.0, float("-inf"), -0.7], [-1.0, -0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    a, b = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    cached = reader.answer_loss(batch, a)
    single = reader.answer_loss_single_pass(batch, b)
    torch.testing.assert_close(cached, single, atol=1e-4, rtol=1e-5)
    cached.sum().backward()
    single.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3)
    assert a.grad.abs().sum() > 1e-4


def test_batch_with_different_candidate_counts_equals_per_example() -> None:
    reader = make_reader()
    questions, documents, answers = padded_batch_inputs()
    batch = reader.prepare(questions, documents, answers)
    log_mask = torch.tensor([[-0.2, -2.0, -0.7, -0.4], [-1.0, -0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    together = reader.answer_loss(batch, log_mask)
    for i in range(3):
        n = len(documents[i])
        single = reader.prepare([questions[i]], [documents[i]], [answers[i]])
        torch.testing.assert_close(
            together[i], reader.answer_loss(single, log_mask[i : i + 1, :n])[0], atol=1e-5, rtol=1e-5
        )


def test_one_document_equals_the_plain_t5_forward() -> None:
    """Independent of our masks: one visible passage is exactly T5 reading that passage."""
    reader = make_reader(torch.float64)
    loss = reader.loss([QUESTION], [[DOCS[2]]], [ANSWER])
    ids = torch.tensor([reader.passage_ids(QUESTION, DOCS[2])])
    labels = reader.tokenizer([ANSWER], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = reader.model(input_ids=ids, labels=labels).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-10)


def test_reader_weights_get_no_gradient_and_stay_unchanged() -> None:
    reader = make_reader()
    before = {k: v.clone() for k, v in reader.model.state_dict().items()}
    batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
    torch.manual_seed(1)
    scorer = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(scorer.parameters(), lr=0.5)
    scorer_before = scorer.weight.detach().clone()
    log_mask = torch.nn.functional.logsigmoid(scorer(torch.randn(1, len(DOCS), 3)).squeeze(-1))
    reader.answer_loss(batch, log_mask).sum().backward()
    assert scorer.weight.grad is not None and scorer.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in reader.model.parameters())
    opt.step()
    assert not torch.equal(scorer.weight, scorer_before)
    for k, v in reader.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_passages_are_truncated_and_laid_out_per_candidate() -> None:
    reader = make_reader(max_document_tokens=5)
    batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
    assert isinstance(batch, FiDBatch)
    head = len(reader.tokenizer(f"question: {QUESTION} context:")["input_ids"])
    seg = batch.key_segment[0]
    for i in range(len(DOCS)):
        assert 0 < int((seg == i).sum()) <= head + 5
    assert int((seg == QUESTION_ONLY).sum()) == head
    assert batch.passage_ids[0, -1].item() == reader.tokenizer.eos_token_id
    assert not torch.any(seg == PAD)


def test_question_only_passage_is_visible_only_without_documents() -> None:
    seg = torch.tensor([[0, 0, 1, QUESTION_ONLY, PAD]])
    inf = float("-inf")
    shown = cross_attention_bias(seg, torch.tensor([[-0.5, inf]]), torch.float32)[0, 0, 0]
    assert shown.tolist() == [-0.5, -0.5, inf, inf, inf]
    hidden = cross_attention_bias(seg, torch.tensor([[inf, inf]]), torch.float32)[0, 0, 0]
    assert hidden.tolist() == [inf, inf, inf, 0.0, inf]


def test_batched_generation_equals_one_question_at_a_time() -> None:
    reader = make_reader()
    questions = ["who built it?", "what is b?"]
    documents = [["ivo lund built the tower"], ["b is two", "c is three"]]
    batched = reader.generate(questions, documents, max_new_tokens=5)
    alone = [
        reader.generate([q], [d], max_new_tokens=5)[0] for q, d in zip(questions, documents, strict=True)
    ]
    assert batched == alone and len(batched) == 2
