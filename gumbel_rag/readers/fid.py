"""Fusion-in-Decoder reader (T5 family): passages encoded separately, cross-attention biased by log M_i.

Each "question: q context: d_i" is encoded alone under no_grad; the encoder states of an example's passages
are concatenated, and the decoder's cross-attention adds log M_i to the logits of passage i's positions.
A question-only passage is appended to every example and stays hidden unless all its candidates are
masked out (or it has none), so the decoder always has something to attend to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F
from transformers.modeling_outputs import BaseModelOutput

from gumbel_rag.readers.base import (
    Reader,
    ReaderBatch,
    candidate_mask_for,
    effective_log_mask,
    freeze,
    grad_ready_embeddings,
    nll_per_row,
    resolve_device,
    segment_mass,
    token_logprobs,
    validate_inputs,
)
from gumbel_rag.readers.bounds import (
    DEFAULT_MAX_ANSWER_TOKENS,
    DEFAULT_MAX_DOCUMENT_TOKENS,
    DEFAULT_MAX_QUESTION_TOKENS,
    bounded_text,
)
from gumbel_rag.readers.cache import cache_kwarg, dynamic_cache
from gumbel_rag.readers.state_cache import DocumentStateCache

PAD = -2
QUESTION_ONLY = -4  # the fallback passage without a document


@dataclass
class FiDBatch(ReaderBatch):
    """Concatenated encoder states (and cached cross-attention keys/values) plus answer labels."""

    passage_ids: torch.Tensor  # (B, K) token ids of the concatenated passages, for the reference path
    key_segment: torch.Tensor  # (B, K) candidate index, QUESTION_ONLY or PAD
    encoder_states: torch.Tensor  # (B, K, d_model), computed under no_grad
    cross_keys: list[torch.Tensor]  # per decoder layer (B, heads, K, d_kv), computed under no_grad
    cross_values: list[torch.Tensor]
    decoder_input_ids: torch.Tensor  # (B, T) start token + labels shifted right
    labels: torch.Tensor  # (B, T)
    target_mask: torch.Tensor  # (B, T) bool


def cross_attention_bias(
    key_segment: torch.Tensor, log_mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """(B, 1, 1, K) additive cross-attention mask: log M_i on passage i, -inf on padding."""
    neg_inf = torch.full((), float("-inf"), dtype=dtype, device=key_segment.device)
    zero = torch.zeros((), dtype=dtype, device=key_segment.device)
    if log_mask.shape[1] > 0:
        all_hidden = torch.isneginf(log_mask).all(dim=1, keepdim=True)  # (B, 1)
        doc_bias = log_mask.gather(1, key_segment.clamp(min=0))
    else:
        all_hidden = torch.ones(key_segment.shape[0], 1, dtype=torch.bool, device=key_segment.device)
        doc_bias = zero.expand(key_segment.shape)
    # The question-only passage is a fallback: visible exactly when no document is.
    question_only = torch.where(all_hidden, zero, neg_inf)
    bias = torch.where(key_segment >= 0, doc_bias, neg_inf)
    bias = torch.where(key_segment == QUESTION_ONLY, question_only, bias)
    return bias[:, None, None, :]


def block_diagonal_bias(key_segment: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, K, K) encoder self-attention mask keeping every passage to itself (padding sees itself)."""
    same = key_segment[:, :, None] == key_segment[:, None, :]
    real = (key_segment != PAD)[:, None, :]
    eye = torch.eye(key_segment.shape[1], dtype=torch.bool, device=key_segment.device)[None]
    allowed = (same & real) | eye
    zero = torch.zeros((), dtype=dtype, device=key_segment.device)
    return torch.where(allowed, zero, torch.full((), float("-inf"), dtype=dtype, device=key_segment.device))[
        :, None
    ]


def _pad_stack(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    """Right-padded (len(rows), max_len) long tensor."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


def _cross_cache(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> Any:
    """A fresh EncoderDecoderCache whose cross-attention part holds the given keys/values (marked ready)."""
    from transformers import DynamicCache, EncoderDecoderCache

    cross = dynamic_cache(keys, values)
    # EncoderDecoderCache marks a layer "already computed" when its cross cache is non-empty at init.
    return EncoderDecoderCache(DynamicCache(), cross)


class FiDReader(Reader):
    """A frozen encoder-decoder (T5 family) reading passages Fusion-in-Decoder style under a mask."""

    auto_model_class = "AutoModelForSeq2SeqLM"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        max_document_tokens: int = DEFAULT_MAX_DOCUMENT_TOKENS,
        passage_batch_size: int = 16,
        max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS,
        max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
        state_cache: DocumentStateCache | None = None,
    ) -> None:
        """Wrap (and freeze) a seq2seq LM; max_document_tokens bounds each passage's document part.

        ``max_question_tokens`` cuts longer questions (counted in :attr:`truncations`);
        ``max_answer_tokens`` marks longer answers as not trainable (:meth:`skip_reason`);
        ``state_cache`` keeps each passage's encoder states for later calls (a passage holds the
        question, so they are reused across epochs, not across questions).
        """
        self.state_cache = state_cache
        self._set_bounds(max_document_tokens, max_question_tokens, max_answer_tokens)
        self.device = resolve_device(device, model)
        self.model = freeze(model.to(self.device))
        self.tokenizer = tokenizer
        self.passage_batch_size = passage_batch_size
        self._cache_kwarg = cache_kwarg(self.model)
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = pad if isinstance(pad, int) else 0
        start = getattr(self.model.config, "decoder_start_token_id", None)
        self._start_id = start if isinstance(start, int) else self._pad_id

    def passage_ids(self, question: str, document: str | None) -> list[int]:
        """Token ids of 'question: q context: d' with the document part cut to max_document_tokens."""
        return self._passage_ids(self.bounded_question(question), document)

    def _passage_ids(self, question: str, document: str | None) -> list[int]:
        head = f"question: {question} context:"
        budget = len(self.tokenizer(head)["input_ids"]) + self.max_document_tokens
        if document is None:
            text = head
        else:  # only a bounded prefix of the document is tokenized; the ids kept are the same
            text = f"{head} {bounded_text(self.tokenizer, document, self.max_document_tokens)}"
        return list(self.tokenizer(text, truncation=True, max_length=budget)["input_ids"])

    def _answer_length(self, answer: str) -> int:
        return len(self.tokenizer(answer)["input_ids"])  # with T5's </s>, as in the labels

    @torch.no_grad()
    def _encode_passages(self, passages: list[list[int]]) -> list[torch.Tensor]:
        """Per passage: its (len, d_model) encoder states, each passage encoded alone."""
        encoder = self.model.get_encoder()
        out: list[Any] = [None] * len(passages)
        order = sorted(range(len(passages)), key=lambda j: -len(passages[j]))
        for start in range(0, len(order), self.passage_batch_size):
            chunk = order[start : start + self.passage_batch_size]
            ids = _pad_stack([passages[j] for j in chunk], self._pad_id).to(self.device)
            attention = torch.zeros_like(ids)
            for row, j in enumerate(chunk):
                attention[row, : len(passages[j])] = 1
            states = encoder(input_ids=ids, attention_mask=attention).last_hidden_state
            for row, j in enumerate(chunk):
                out[j] = states[row, : len(passages[j])]
        return out

    @torch.no_grad()
    def _cross_key_values(
        self, states: torch.Tensor, key_segment: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Let one decoder step fill a cross-attention cache: the model's own K/V projections, no grad."""
        cache = _cross_cache([], [])
        start = torch.full((states.shape[0], 1), self._start_id, device=self.device)
        zero_mask = torch.zeros(states.shape[0], key_segment.shape[1], device=self.device, dtype=self.dtype)
        self.model(
            encoder_outputs=(states,),
            attention_mask=zero_mask[:, None, None, :],
            decoder_input_ids=start,
            use_cache=True,
            **{self._cache_kwarg: cache},
        )
        layers = cache.cross_attention_cache.layers
        return [layer.keys for layer in layers], [layer.values for layer in layers]

    def _encode(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]]
    ) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
        """Per example: the passages' token ids end to end, their (B, K) segments and (B, K, d) states."""
        bounded = [self.bounded_question(q) for q in questions]
        per_example = [
            [self._passage_ids(q, d) for d in docs] + [self._passage_ids(q, None)]
            for q, docs in zip(bounded, documents, strict=True)
        ]
        unique = list(dict.fromkeys(tuple(p) for passages in per_example for p in passages))

        def encode(missing: list[tuple[int, ...]]) -> list[list[torch.Tensor]]:
            return [[states] for states in self._encode_passages([list(p) for p in missing])]

        encoded = self.cached_states("fid-passage", unique, encode)

        ids_rows, seg_rows, state_rows = [], [], []
        for passages in per_example:
            ids, seg, states = [], [], []
            for i, p in enumerate(passages):
                is_question_only = i == len(passages) - 1
                ids += p
                seg += [QUESTION_ONLY if is_question_only else i] * len(p)
                states.append(encoded[tuple(p)][0])
            ids_rows.append(ids)
            seg_rows.append(seg)
            state_rows.append(torch.cat(states, dim=0))
        width = max(len(s) for s in seg_rows)
        encoder_states = torch.stack([F.pad(s, (0, 0, 0, width - s.shape[0])) for s in state_rows])
        return ids_rows, _pad_stack(seg_rows, PAD).to(self.device), encoder_states

    def prepare(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> FiDBatch:
        """Tokenize and encode every passage once under torch.no_grad() (states reused by answer_loss)."""
        validate_inputs(questions, documents, answers)
        self.check_trainable(questions, answers)
        ids_rows, key_segment, encoder_states = self._encode(questions, documents)
        cross_keys, cross_values = self._cross_key_values(encoder_states, key_segment)

        labels = []
        for a in answers:
            ids = list(self.tokenizer(a)["input_ids"])  # T5 appends </s>, FiD's training target
            if not ids:
                raise ValueError(f"answer {a!r} encodes to no tokens")
            labels.append(ids)
        label_ids = _pad_stack(labels, self._pad_id)
        target_mask = _pad_stack([[1] * len(x) for x in labels], 0).bool()
        decoder_input_ids = torch.cat(
            [torch.full((len(labels), 1), self._start_id, dtype=torch.long), label_ids[:, :-1]], dim=1
        )
        dev = self.device
        return FiDBatch(
            candidate_mask=candidate_mask_for(documents, dev),
            passage_ids=_pad_stack(ids_rows, self._pad_id).to(dev),
            key_segment=key_segment,
            encoder_states=encoder_states,
            cross_keys=cross_keys,
            cross_values=cross_values,
            decoder_input_ids=decoder_input_ids.to(dev),
            labels=label_ids.to(dev),
            target_mask=target_mask.to(dev),
        )

    def answer_loss(self, batch: ReaderBatch, log_mask: torch.Tensor) -> torch.Tensor:
        """(B,) mean answer NLL: only the decoder runs, over cached cross-attention keys/values."""
        batch = _as_fid_batch(batch)
        out = self._decoder_forward(batch, log_mask)
        return nll_per_row(out.logits, batch.labels, batch.target_mask)

    def answer_token_logprobs(
        self, batch: ReaderBatch, log_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) log p of each answer token (decoder over cached cross keys) and the (B, A) label mask."""
        batch = _as_fid_batch(batch)
        out = self._decoder_forward(batch, log_mask)
        return token_logprobs(out.logits, batch.labels, batch.target_mask), batch.target_mask

    @torch.no_grad()
    def document_attention(self, batch: ReaderBatch) -> torch.Tensor:
        """(B, N) cross-attention mass of the decoder's answer positions on each passage's encoder states."""
        batch = _as_fid_batch(batch)
        zeros = torch.zeros(batch.candidate_mask.shape, device=self.device)
        # SDPA kernels never materialise the attention weights; eager does, for this one pass.
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            out = self._decoder_forward(batch, zeros, output_attentions=True)
        finally:
            self.model.set_attn_implementation(previous)
        mass = torch.stack(
            [segment_mass(a.float(), batch.key_segment, batch.num_candidates) for a in out.cross_attentions]
        )  # (layers, B, H, A, N)
        per_token = mass.mean(dim=(0, 2))
        weights = batch.target_mask.to(torch.float32)
        return (per_token * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)

    @torch.no_grad()
    def generate(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]], max_new_tokens: int = 32
    ) -> list[str]:
        """Greedy answers, Fusion-in-Decoder style: the decoder reads every passage's encoder states."""
        # Any placeholder answer: only the questions and documents are checked here.
        validate_inputs(questions, documents, ["x"] * len(questions))
        _, key_segment, encoder_states = self._encode(questions, documents)
        # The question-only passage stays hidden whenever a document is present, exactly as in training.
        visible = key_segment >= 0
        no_docs = ~candidate_mask_for(documents, self.device).any(dim=1, keepdim=True)
        visible |= (key_segment == QUESTION_ONLY) & no_docs
        output = self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
            attention_mask=visible.long(),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(output, skip_special_tokens=True)]

    def _decoder_forward(self, batch: FiDBatch, log_mask: torch.Tensor, **model_kwargs: Any) -> Any:
        """Run the decoder over the cached cross-attention keys/values with log_mask on passage keys."""
        self.model.eval()
        bias = cross_attention_bias(
            batch.key_segment, effective_log_mask(batch, log_mask, self.dtype), self.dtype
        )
        return self.model(
            encoder_outputs=(batch.encoder_states,),
            attention_mask=bias,
            decoder_inputs_embeds=grad_ready_embeddings(
                self.model.get_input_embeddings(), batch.decoder_input_ids
            ),
            use_cache=True,
            **model_kwargs,
            **{self._cache_kwarg: _cross_cache(batch.cross_keys, batch.cross_values)},
        )

    def answer_loss_single_pass(self, batch: ReaderBatch, log_mask: torch.Tensor) -> torch.Tensor:
        """Reference: re-encode all passages in one block-diagonal encoder pass, then a plain decoder pass."""
        batch = _as_fid_batch(batch)
        self.model.eval()
        bias = cross_attention_bias(
            batch.key_segment, effective_log_mask(batch, log_mask, self.dtype), self.dtype
        )
        states = self.model.get_encoder()(
            input_ids=batch.passage_ids, attention_mask=block_diagonal_bias(batch.key_segment, self.dtype)
        ).last_hidden_state
        out = self.model(
            encoder_outputs=(states,),
            attention_mask=bias,
            decoder_inputs_embeds=grad_ready_embeddings(
                self.model.get_input_embeddings(), batch.decoder_input_ids
            ),
            use_cache=False,
        )
        return nll_per_row(out.logits, batch.labels, batch.target_mask)


def _as_fid_batch(batch: ReaderBatch) -> FiDBatch:
    if not isinstance(batch, FiDBatch):
        raise TypeError(f"expected a FiDBatch from FiDReader.prepare, got {type(batch).__name__}")
    return batch
