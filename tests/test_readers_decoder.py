"""DecoderReader: masked parallel-context reading with tiny random Llama / Qwen2 / Gemma / Gemma3 models."""

from __future__ import annotations

import math
import os
import re

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from gumbel_rag.readers import DecoderBatch, DecoderReader
from gumbel_rag.readers.decoder import PAD, PREFIX, structural_bias

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Answer the question using the documents . Document : Question : Answer : user assistant",
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


def make_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over CORPUS, built offline."""
    words = sorted({w for line in CORPUS for w in re.findall(r"\w+|[^\w\s]+", line)})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(family: str, vocab_size: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A 2-layer random model of the family; a large init scale makes attention (and so the mask) matter."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    if family == "llama":
        config = LlamaConfig(**common)
    elif family == "qwen2":
        config = Qwen2Config(**common)
    elif family == "gemma":
        config = GemmaConfig(head_dim=8, **common)
    elif family == "gemma3":
        # A tiny sliding window so the sliding-attention layer's window really cuts into the documents.
        config = Gemma3TextConfig(
            head_dim=8, sliding_window=6, layer_types=["sliding_attention", "full_attention"], **common
        )
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype)


FAMILIES = ["llama", "qwen2", "gemma", "gemma3"]


def make_reader(family: str = "llama", dtype: torch.dtype = torch.float32, **kwargs) -> DecoderReader:
    tok = make_tokenizer(kwargs.pop("chat", True))
    kwargs.setdefault("max_document_tokens", 12)
    return DecoderReader(make_model(family, len(tok), dtype), tok, device="cpu", **kwargs)


def hard_log_mask(n: int, keep: set[int]) -> torch.Tensor:
    return torch.tensor([[0.0 if i in keep else float("-inf") for i in range(n)]])


@pytest.mark.parametrize("family", FAMILIES)
def test_hard_mask_equals_reader_given_only_the_subset(family: str) -> None:
    reader = make_reader(family)
    batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
    full = reader.answer_loss(batch, torch.zeros(1, len(DOCS)))
    for keep in ({0, 2}, {1}, set()):
        masked = reader.answer_loss(batch, hard_log_mask(len(DOCS), keep))
        alone = reader.loss([QUESTION], [[DOCS[i] for i in sorted(keep)]], [ANSWER])
        torch.testing.assert_close(masked, alone, atol=1e-4, rtol=1e-5)
        # Otherwise the equality above would hold trivially.
        assert (masked - full).abs().item() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_matches_finite_differences(family: str) -> None:
    reader = make_reader(family, dtype=torch.float64)
    batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
    # A hard-excluded document (-inf) must not break the gradient of the others, and gets exactly 0.
    base = torch.tensor([[-0.3, -1.7, float("-inf"), -0.05]], dtype=torch.float64)
    log_mask = base.clone().requires_grad_(True)
    reader.answer_loss(batch, log_mask).sum().backward()
    grad = log_mask.grad[0]
    assert torch.isfinite(grad).all()
    assert grad[2].item() == 0.0
    # RMSNorm and RoPE run in float32 even in a float64 model, so a tiny step drowns in round-off.
    eps = 1e-2
    for i in (0, 1, 3):
        up, down = base.clone(), base.clone()
        up[0, i] += eps
        down[0, i] -= eps
        with torch.no_grad():
            fd = (reader.answer_loss(batch, up) - reader.answer_loss(batch, down)).item() / (2 * eps)
        assert abs(fd) > 1e-4  # the document matters, so the comparison is meaningful
        assert grad[i].item() == pytest.approx(fd, rel=1e-3, abs=1e-4)


def padded_batch_inputs() -> tuple[list[str], list[list[str]], list[str]]:
    questions = [QUESTION, "where is the eiffel tower ?", "what color is the zorblax fruit ?"]
    documents = [DOCS, [DOCS[1], DOCS[3]], []]
    answers = [ANSWER, "paris , france", "purple"]
    return questions, documents, answers


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_path_equals_single_forward(family: str) -> None:
    reader = make_reader(family)
    questions, documents, answers = padded_batch_inputs()
    batch = reader.prepare(questions, documents, answers)
    base = torch.tensor([[-0.2, -2.0, -0.7, float("-inf")], [-1.0, -0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    cached_mask = base.clone().requires_grad_(True)
    single_mask = base.clone().requires_grad_(True)
    cached = reader.answer_loss(batch, cached_mask)
    single = reader.answer_loss_single_pass(batch, single_mask)
    torch.testing.assert_close(cached, single, atol=1e-4, rtol=1e-5)
    cached.sum().backward()
    single.sum().backward()
    torch.testing.assert_close(cached_mask.grad, single_mask.grad, atol=1e-4, rtol=1e-3)
    assert cached_mask.grad.abs().sum() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_with_different_candidate_counts_equals_per_example(family: str) -> None:
    reader = make_reader(family)
    questions, documents, answers = padded_batch_inputs()
    batch = reader.prepare(questions, documents, answers)
    assert batch.candidate_mask.tolist() == [[True] * 4, [True, True, False, False], [False] * 4]
    log_mask = torch.tensor([[-0.2, -2.0, -0.7, -0.4], [-1.0, -0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    together = reader.answer_loss(batch, log_mask)
    for b in range(3):
        n = len(documents[b])
        single = reader.prepare([questions[b]], [documents[b]], [answers[b]])
        alone = reader.answer_loss(single, log_mask[b : b + 1, :n])
        torch.testing.assert_close(together[b], alone[0], atol=1e-5, rtol=1e-5)


def test_one_full_length_document_equals_the_plain_causal_lm() -> None:
    """Independent check of positions and masks: one document filling its slot is a plain sequence."""
    probe = make_reader("llama", dtype=torch.float64, max_document_tokens=200)
    doc_len = len(probe.document_ids(DOCS[0]))
    reader = DecoderReader(probe.model, probe.tokenizer, device="cpu", max_document_tokens=doc_len)
    loss = reader.loss([QUESTION], [[DOCS[0]]], [ANSWER])
    q_ids, a_ids = reader.question_answer_ids(QUESTION, ANSWER)
    ids = torch.tensor([reader.prefix_ids + reader.document_ids(DOCS[0]) + q_ids + a_ids])
    with torch.no_grad():
        logits = reader.model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits[-len(a_ids) - 1 : -1], dim=-1)
    expected = -logp.gather(1, torch.tensor(a_ids)[:, None]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_reader_weights_get_no_gradient_and_stay_unchanged(family: str) -> None:
    reader = make_reader(family)
    before = {k: v.clone() for k, v in reader.model.state_dict().items()}
    batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
    torch.manual_seed(1)
    scorer = torch.nn.Linear(3, 1)
    features = torch.randn(1, len(DOCS), 3)
    opt = torch.optim.SGD(scorer.parameters(), lr=0.5)
    scorer_before = scorer.weight.detach().clone()
    log_mask = torch.nn.functional.logsigmoid(scorer(features).squeeze(-1))
    reader.answer_loss(batch, log_mask).sum().backward()
    assert scorer.weight.grad is not None and scorer.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in reader.model.parameters())
    opt.step()
    assert not torch.equal(scorer.weight, scorer_before)
    for k, v in reader.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not reader.model.training


def test_cache_is_reusable_across_calls() -> None:
    reader = make_reader("llama")
    questions, documents, answers = padded_batch_inputs()
    batch = reader.prepare(questions, documents, answers)
    snapshot = [k.clone() for k in batch.keys]
    shapes = [tuple(v.shape) for v in batch.values]
    log_mask = torch.full((3, 4), -0.5)
    first = reader.answer_loss(batch, log_mask)
    second = reader.answer_loss(batch, log_mask)
    assert torch.equal(first, second)
    assert [tuple(v.shape) for v in batch.values] == shapes
    assert all(torch.equal(a, b) for a, b in zip(batch.keys, snapshot, strict=True))


def test_documents_do_not_depend_on_their_order() -> None:
    reader = make_reader("qwen2")
    log_mask = torch.tensor([[-0.1, -1.5, -0.4, -3.0]])
    loss = reader.answer_loss(reader.prepare([QUESTION], [DOCS], [ANSWER]), log_mask)
    perm = [2, 0, 3, 1]
    shuffled = reader.prepare([QUESTION], [[DOCS[i] for i in perm]], [ANSWER])
    torch.testing.assert_close(reader.answer_loss(shuffled, log_mask[:, perm]), loss, atol=1e-5, rtol=1e-5)


def test_padded_candidate_entries_are_ignored() -> None:
    reader = make_reader("llama")
    questions, documents, answers = padded_batch_inputs()
    batch = reader.prepare(questions, documents, answers)
    log_mask = torch.tensor([[-0.2, -2.0, -0.7, -0.4], [-1.0, -0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    junk = log_mask.clone()
    junk[~batch.candidate_mask] = 3.0
    junk.requires_grad_(True)
    torch.testing.assert_close(reader.answer_loss(batch, junk), reader.answer_loss(batch, log_mask))
    reader.answer_loss(batch, junk).sum().backward()
    assert torch.all(junk.grad[~batch.candidate_mask] == 0)


def test_a_soft_mask_interpolates_between_hard_ones() -> None:
    reader = make_reader("llama")
    batch = reader.prepare([QUESTION], [DOCS[:2]], [ANSWER])
    losses = [reader.answer_loss(batch, torch.tensor([[0.0, math.log(m)]])).item() for m in (1e-12, 0.5, 1.0)]
    without = reader.answer_loss(batch, torch.tensor([[0.0, float("-inf")]])).item()
    assert losses[0] == pytest.approx(without, rel=1e-5, abs=1e-5)
    assert min(losses[0], losses[2]) < losses[1] < max(losses[0], losses[2])


def test_prompt_uses_the_chat_template_when_present() -> None:
    chat = make_reader("llama")
    assert chat.prompt.prefix.startswith("<|im_start|>user\nAnswer the question using the documents.")
    assert chat.prompt.question.endswith("<|im_end|>\n<|im_start|>assistant\n")
    plain = make_reader("llama", chat=False)
    assert plain.prompt.prefix == "Answer the question using the documents.\n"
    assert plain.prompt.question.endswith("\nAnswer:")
    for reader in (chat, plain):
        batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
        targets = batch.qa_ids[batch.target_mask].tolist()
        assert reader.tokenizer.decode(targets).split() == ANSWER.split()


def test_layout_positions_and_truncation() -> None:
    reader = make_reader("llama", max_document_tokens=8)
    batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
    assert isinstance(batch, DecoderBatch)
    lp = reader.prefix_length
    seg, pos = batch.key_segment[0], batch.key_position[0]
    assert torch.all(pos[seg == PREFIX] == torch.arange(lp))
    for i in range(len(DOCS)):
        doc_pos = pos[seg == i]
        assert 0 < len(doc_pos) <= 8
        assert torch.equal(doc_pos, torch.arange(lp, lp + len(doc_pos)))  # every document restarts at lp
    valid = batch.qa_valid[0]
    assert batch.qa_position[0][valid][0].item() == lp + 8 == reader.question_offset
    assert not torch.any(seg == PAD)  # a single example has no key padding


def test_structural_bias_is_the_documented_pattern() -> None:
    # keys: prefix, doc0, doc0, doc1, pad | queries: qa, qa
    k_seg = torch.tensor([[PREFIX, 0, 0, 1, PAD, -3, -3]])
    k_idx = torch.arange(7)[None]
    k_pos = torch.tensor([[0, 1, 2, 1, 0, 5, 6]])
    q_seg, q_idx, q_pos = k_seg[:, 5:], k_idx[:, 5:], k_pos[:, 5:]
    bias = structural_bias(
        q_seg, q_idx, q_pos, k_seg, k_idx, k_pos, torch.tensor([[-0.5, -2.0]]), None, torch.float32
    )
    inf = float("-inf")
    expected = torch.tensor([[0.0, -0.5, -0.5, -2.0, inf, 0.0, inf], [0.0, -0.5, -0.5, -2.0, inf, 0.0, 0.0]])
    assert torch.equal(bias[0, 0], expected)


def test_log_mask_of_the_wrong_shape_is_rejected() -> None:
    reader = make_reader("llama")
    batch = reader.prepare([QUESTION], [DOCS], [ANSWER])
    with pytest.raises(ValueError, match="shape"):
        reader.answer_loss(batch, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="questions"):
        reader.prepare([QUESTION, QUESTION], [DOCS], [ANSWER])
