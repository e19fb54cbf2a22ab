"""Decoder-only reader (Llama, Qwen2, Gemma, SmolLM2 ...) with parallel context encoding.

Layout of one example, in key order:

    [prefix | doc_1 | doc_2 | ... | doc_n | pad] [pad | question + answer]
     pos 0.. | each doc restarts at prefix_len   |  starts at prefix_len + max_document_tokens

Every document attends to the prefix and causally to itself only, so its keys/values do not depend on the
other documents or on the mask and are computed once under no_grad. The question+answer tokens attend to
the prefix, to document i's keys with additive bias log M_i, and causally to themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gumbel_rag.readers.base import (
    DEFAULT_INSTRUCTION,
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

logger = logging.getLogger(__name__)

# Segment ids of keys and queries; documents use their candidate index (>= 0).
PREFIX = -1
PAD = -2
QA = -3

_DOCS_SENTINEL = "<<GUMBEL_RAG_DOCUMENTS>>"
_QUESTION_SENTINEL = "<<GUMBEL_RAG_QUESTION>>"
_ANSWER_SENTINEL = "<<GUMBEL_RAG_ANSWER>>"


@dataclass(frozen=True)
class PromptFormat:
    """The text pieces around documents, question and answer (sentinel-free, ready to tokenize)."""

    prefix: str  # before the documents, e.g. chat opening + instruction
    question: str  # after the documents; contains _QUESTION_SENTINEL where the question goes
    answer_prefix: str  # glued before the answer text (" " for the plain prompt)
    document_prefix: str = "Document: "
    document_suffix: str = "\n"
    bos_ids: tuple[int, ...] = ()  # prepended to the prefix tokens


def plain_prompt_format(tokenizer: Any, instruction: str = DEFAULT_INSTRUCTION) -> PromptFormat:
    """'instruction / Document: ... / Question: ... Answer:' for tokenizers without a chat template."""
    return PromptFormat(
        prefix=f"{instruction}\n",
        question=f"Question: {_QUESTION_SENTINEL}\nAnswer:",
        answer_prefix=" ",
        bos_ids=tuple(leading_bos(tokenizer)),
    )


def chat_prompt_format(tokenizer: Any, instruction: str = DEFAULT_INSTRUCTION) -> PromptFormat | None:
    """Split the tokenizer's chat template around the documents, question and answer; None if it can't."""
    messages = [
        {"role": "user", "content": f"{instruction}\n{_DOCS_SENTINEL}Question: {_QUESTION_SENTINEL}"},
        {"role": "assistant", "content": _ANSWER_SENTINEL},
    ]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as err:  # templates are user code; any failure means "use the plain prompt"
        logger.warning("chat template could not be rendered (%s); using the plain prompt", err)
        return None
    if not isinstance(rendered, str):
        return None
    docs_at = rendered.find(_DOCS_SENTINEL)
    question_at = rendered.find(_QUESTION_SENTINEL)
    answer_at = rendered.find(_ANSWER_SENTINEL)
    if not (0 <= docs_at < question_at < answer_at):
        logger.warning("chat template reorders or drops message content; using the plain prompt")
        return None
    return PromptFormat(
        prefix=rendered[:docs_at],
        question=rendered[docs_at + len(_DOCS_SENTINEL) : answer_at],
        answer_prefix="",
    )


def leading_bos(tokenizer: Any) -> list[int]:
    """[bos_id] when the tokenizer prepends a BOS token to plain text, else []."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


@dataclass
class DecoderBatch(ReaderBatch):
    """Cached prefix+document keys/values and the question+answer tokens of B examples."""

    key_ids: torch.Tensor  # (B, K) token ids of the cached keys (prefix, docs, pad), for the reference path
    key_segment: torch.Tensor  # (B, K) PREFIX, PAD or the candidate index
    key_position: torch.Tensor  # (B, K) position ids
    keys: list[torch.Tensor]  # per layer (B, kv_heads, K, head_dim), computed under no_grad
    values: list[torch.Tensor]
    qa_ids: torch.Tensor  # (B, T) question+answer tokens, left padded so every answer ends at T
    qa_valid: torch.Tensor  # (B, T) bool
    qa_position: torch.Tensor  # (B, T)
    target_mask: torch.Tensor  # (B, T) bool, True on answer tokens (the loss targets)
    answer_width: int  # largest answer length A; targets live in the last A columns


def structural_bias(
    q_segment: torch.Tensor,
    q_index: torch.Tensor,
    q_position: torch.Tensor,
    k_segment: torch.Tensor,
    k_index: torch.Tensor,
    k_position: torch.Tensor,
    segment_bias: torch.Tensor | None,
    window: int | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(B, 1, Q, K) additive mask of parallel context encoding; segment_bias (B, N) biases QA->doc logits."""
    qs, ks = q_segment[:, :, None], k_segment[:, None, :]
    causal = k_index[:, None, :] <= q_index[:, :, None]
    key_prefix = ks == PREFIX
    allowed = torch.where(
        qs == QA,
        key_prefix | (ks >= 0) | ((ks == QA) & causal),
        torch.where(qs >= 0, key_prefix | ((ks == qs) & causal), (qs == PREFIX) & key_prefix & causal),
    )
    # Padding queries see only themselves, so no softmax row is empty (an empty row gives NaN that leaks
    # into real rows through 0 * NaN in the value product).
    allowed = allowed | (k_index[:, None, :] == q_index[:, :, None])
    if window is not None:
        allowed = allowed & ((q_position[:, :, None] - k_position[:, None, :]) < window)
    zero = torch.zeros((), dtype=dtype, device=q_segment.device)
    neg_inf = torch.full((), float("-inf"), dtype=dtype, device=q_segment.device)
    values = zero.expand(allowed.shape)
    if segment_bias is not None and segment_bias.shape[1] > 0:
        doc_bias = segment_bias.gather(1, k_segment.clamp(min=0))  # (B, K)
        values = torch.where((qs == QA) & (ks >= 0), doc_bias[:, None, :], values)
    return torch.where(allowed, values, neg_inf).unsqueeze(1)


def layer_windows(config: Any) -> dict[str, int | None] | int | None:
    """Sliding windows per layer type (dict) for hybrid models, or one window (int/None) for all layers."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not layer_types:
        # Models without layer_types (e.g. Mistral) slide every layer when sliding_window is set.
        return window
    kinds = set(layer_types)
    unknown = kinds - {"full_attention", "sliding_attention"}
    if unknown:
        raise NotImplementedError(f"layer types {sorted(unknown)} are not supported by DecoderReader")
    if kinds == {"full_attention"}:
        return None
    return {kind: (window if kind == "sliding_attention" else None) for kind in kinds}


def model_masks(config: Any, build: Any) -> torch.Tensor | dict[str, torch.Tensor]:
    """Call build(window) once per distinct sliding window and shape the result the way the model wants."""
    windows = layer_windows(config)
    if not isinstance(windows, dict):
        return build(windows)
    by_window = {w: build(w) for w in set(windows.values())}
    return {kind: by_window[w] for kind, w in windows.items()}


def _cache_tensors(cache: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values of a DynamicCache."""
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


def _pad_stack(rows: Sequence[Sequence[int]], pad: int, left: bool = False) -> torch.Tensor:
    """Stack int lists into a (len(rows), max_len) long tensor padded with `pad` on the right or left."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            else:
                out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class DecoderReader(Reader):
    """A frozen decoder-only LLM reading documents in parallel, with log M_i added on document i's keys."""

    auto_model_class = "AutoModelForCausalLM"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        max_document_tokens: int = DEFAULT_MAX_DOCUMENT_TOKENS,
        instruction: str = DEFAULT_INSTRUCTION,
        use_chat_template: bool | None = None,
        document_batch_size: int | None = None,
        max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS,
        max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
        state_cache: DocumentStateCache | None = None,
    ) -> None:
        """Wrap (and freeze) a causal LM; use_chat_template None means 'if the tokenizer has one'.

        ``max_question_tokens`` cuts longer questions (counted in :attr:`truncations`);
        ``max_answer_tokens`` marks longer answers as not trainable (:meth:`skip_reason`);
        ``state_cache`` keeps each distinct document's keys/values for later ``prepare`` calls.
        """
        self.state_cache = state_cache
        self._set_bounds(max_document_tokens, max_question_tokens, max_answer_tokens, min_document_tokens=2)
        self.device = resolve_device(device, model)
        self.model = freeze(model.to(self.device))
        self.tokenizer = tokenizer
        # Bigger chunks halve prepare() on an H100 (launch-bound); on CPU they only cost memory.
        self.document_batch_size = document_batch_size or (64 if self.device.type == "cuda" else 16)
        self.prompt = self._prompt_format(tokenizer, instruction, use_chat_template)
        self.prefix_ids = list(self.prompt.bos_ids) + self._encode(self.prompt.prefix)
        self._document_suffix_ids = self._encode(self.prompt.document_suffix)
        self._cache_kwarg = cache_kwarg(self.model)
        self._pad_id = self._pick_pad_id(tokenizer)

    @property
    def prefix_length(self) -> int:
        """Number of shared prefix tokens."""
        return len(self.prefix_ids)

    @property
    def question_offset(self) -> int:
        """Position id of the first question token, the same whatever the documents."""
        return self.prefix_length + self.max_document_tokens

    # ---------------------------------------------------------------- tokenization

    @staticmethod
    def _prompt_format(tokenizer: Any, instruction: str, use_chat_template: bool | None) -> PromptFormat:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise ValueError("use_chat_template=True but the tokenizer has no chat template")
        if use_chat_template is not False and has_template:
            fmt = chat_prompt_format(tokenizer, instruction)
            if fmt is not None:
                return fmt
            if use_chat_template:
                raise ValueError("the tokenizer's chat template cannot be split around the documents")
        return plain_prompt_format(tokenizer, instruction)

    @staticmethod
    def _pick_pad_id(tokenizer: Any) -> int:
        for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
            value = getattr(tokenizer, name, None)
            if isinstance(value, int):
                return value
        return 0

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def document_ids(self, text: str) -> list[int]:
        """Token ids of one document: prefix + text + suffix, cut to max_document_tokens (suffix kept)."""
        suffix = self._document_suffix_ids
        budget = max(self.max_document_tokens - len(suffix), 1)
        # Only a bounded prefix is tokenized: the ids kept are those of the whole text.
        body = self._encode(self.prompt.document_prefix + bounded_text(self.tokenizer, text, budget))
        if len(body) > budget:
            self._truncations.add("documents", "", warn=False)  # by design: the slot is that wide
        return body[:budget] + suffix

    def _question_text(self, question: str) -> str:
        """The question-side prompt text around the (bounded) question."""
        return self.prompt.question.replace(_QUESTION_SENTINEL, self.bounded_question(question))

    def _answer_length(self, answer: str) -> int:
        return len(self._encode(self.prompt.answer_prefix + answer))

    def question_answer_ids(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(question-side ids, answer ids) following the documents; ValueError for an unusable answer."""
        self.check_trainable([question], [answer])
        q_text = self._question_text(question)
        q_ids = self._encode(q_text)
        # Tokenized in context the answer gets its natural first token (SentencePiece would otherwise
        # add a dummy-prefix piece); fall back to tokenizing it alone if the boundary moves.
        joint = self._encode(q_text + self.prompt.answer_prefix + answer)
        if joint[: len(q_ids)] == q_ids:
            a_ids = joint[len(q_ids) :]
        else:
            a_ids = self._encode(self.prompt.answer_prefix + answer)
        if not a_ids:
            raise ValueError(f"answer {answer!r} encodes to no tokens")
        return q_ids, a_ids

    # ---------------------------------------------------------------- preparation

    @torch.no_grad()
    def _encode_prefix(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ids = torch.tensor([self.prefix_ids], device=self.device)
        pos = torch.arange(ids.shape[1], device=self.device)[None]
        seg = torch.full_like(ids, PREFIX)

        def build(window: int | None) -> torch.Tensor:
            return structural_bias(seg, pos, pos, seg, pos, pos, None, window, self.dtype)

        cache = dynamic_cache([], [])
        self.model(
            input_ids=ids,
            position_ids=pos,
            attention_mask=model_masks(self.model.config, build),
            use_cache=True,
            logits_to_keep=1,  # only the cache is wanted; full-vocab logits would cost ~25% more
            **{self._cache_kwarg: cache},
        )
        keys, values = _cache_tensors(cache)
        if len(keys) != self.model.config.num_hidden_layers:
            raise NotImplementedError("models that share or skip KV cache layers are not supported")
        return keys, values

    @torch.no_grad()
    def _encode_documents(
        self, docs: list[list[int]], prefix_kv: tuple[list[torch.Tensor], list[torch.Tensor]]
    ) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """Per document: per-layer (1, kv_heads, len, head_dim) keys and values, each doc read alone."""
        lp = self.prefix_length
        out: list[Any] = [None] * len(docs)
        order = sorted(range(len(docs)), key=lambda j: -len(docs[j]))  # similar lengths share a chunk
        for start in range(0, len(order), self.document_batch_size):
            chunk = order[start : start + self.document_batch_size]
            ids = _pad_stack([docs[j] for j in chunk], self._pad_id).to(self.device)
            n, width = ids.shape
            valid = ids.new_zeros(ids.shape, dtype=torch.bool)
            for row, j in enumerate(chunk):
                valid[row, : len(docs[j])] = True
            q_seg = torch.where(valid, 0, PAD)
            q_idx = (lp + torch.arange(width, device=self.device)).expand(n, width)
            k_seg = torch.cat([torch.full((n, lp), PREFIX, device=self.device), q_seg], dim=1)
            k_idx = torch.arange(lp + width, device=self.device).expand(n, lp + width)

            def build(window: int | None, q_seg=q_seg, q_idx=q_idx, k_seg=k_seg, k_idx=k_idx) -> torch.Tensor:
                return structural_bias(q_seg, q_idx, q_idx, k_seg, k_idx, k_idx, None, window, self.dtype)

            pk, pv = prefix_kv
            cache = dynamic_cache(
                [k.expand(n, -1, -1, -1) for k in pk], [v.expand(n, -1, -1, -1) for v in pv]
            )
            self.model(
                input_ids=ids,
                position_ids=q_idx,
                attention_mask=model_masks(self.model.config, build),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kwarg: cache},
            )
            keys, values = _cache_tensors(cache)
            for row, j in enumerate(chunk):
                length = len(docs[j])
                out[j] = (
                    [k[row : row + 1, :, lp : lp + length] for k in keys],
                    [v[row : row + 1, :, lp : lp + length] for v in values],
                )
        return out

    def _state_context(self) -> dict[str, Any]:
        return {"max_document_tokens": self.max_document_tokens, "prefix_ids": self.prefix_ids}

    def _states(self, doc_ids: Sequence[Sequence[list[int]]]) -> tuple[Any, dict[tuple[int, ...], Any]]:
        """Prefix keys/values and those of each distinct document (from the state cache where held)."""
        prefix = tuple(self.prefix_ids)
        (prefix_states,) = self.cached_states(
            "decoder-prefix", [prefix], lambda _: [_flatten(self._encode_prefix())]
        ).values()
        prefix_kv = _unflatten(prefix_states)
        unique = list(dict.fromkeys(tuple(d) for docs in doc_ids for d in docs))

        def encode(missing: list[tuple[int, ...]]) -> list[list[torch.Tensor]]:
            return [_flatten(kv) for kv in self._encode_documents([list(d) for d in missing], prefix_kv)]

        documents = self.cached_states("decoder-document", unique, encode)
        return prefix_kv, {ids: _unflatten(states) for ids, states in documents.items()}

    def prepare(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> DecoderBatch:
        """Tokenize and encode every document once under torch.no_grad() (states reused by answer_loss)."""
        validate_inputs(questions, documents, answers)
        self.check_trainable(questions, answers)
        lp = self.prefix_length
        doc_ids = [[self.document_ids(d) for d in docs] for docs in documents]
        prefix_kv, states = self._states(doc_ids)

        key_ids, key_seg, key_pos, rows = [], [], [], []
        for docs in doc_ids:
            ids, seg, pos = list(self.prefix_ids), [PREFIX] * lp, list(range(lp))
            parts = [prefix_kv]
            for i, d in enumerate(docs):
                ids += d
                seg += [i] * len(d)
                pos += range(lp, lp + len(d))
                parts.append(states[tuple(d)])
            key_ids.append(ids)
            key_seg.append(seg)
            key_pos.append(pos)
            rows.append(parts)
        width = max(len(s) for s in key_seg)
        padded_keys = _assemble_kv([[kv[0] for kv in parts] for parts in rows], width)
        padded_values = _assemble_kv([[kv[1] for kv in parts] for parts in rows], width)

        qa = [self.question_answer_ids(q, a) for q, a in zip(questions, answers, strict=True)]
        dev = self.device
        return DecoderBatch(
            candidate_mask=candidate_mask_for(documents, dev),
            key_ids=_pad_stack(key_ids, self._pad_id).to(dev),
            key_segment=_pad_stack(key_seg, PAD).to(dev),
            key_position=_pad_stack(key_pos, 0).to(dev),
            keys=padded_keys,
            values=padded_values,
            **self._qa_fields(qa),
        )

    def _qa_fields(self, qa: Sequence[tuple[list[int], list[int]]]) -> dict[str, Any]:
        """The question+answer tensors of a DecoderBatch, left padded so every row ends at the same column."""
        qa_rows = [q + a for q, a in qa]
        qa_ids = _pad_stack(qa_rows, self._pad_id, left=True)
        qa_valid = _pad_stack([[1] * len(r) for r in qa_rows], 0, left=True).bool()
        target_mask = _pad_stack([[0] * len(q) + [1] * len(a) for q, a in qa], 0, left=True).bool()
        # Real tokens get question_offset + 0, 1, ...; padding positions are never attended.
        offset = torch.cumsum(qa_valid.long(), dim=1) - 1
        qa_position = self.question_offset + offset.clamp(min=0)
        dev = self.device
        return {
            "qa_ids": qa_ids.to(dev),
            "qa_valid": qa_valid.to(dev),
            "qa_position": qa_position.to(dev),
            "target_mask": target_mask.to(dev),
            "answer_width": max(len(a) for _, a in qa),
        }

    # ---------------------------------------------------------------- losses

    def _loss_from_logits(self, batch: DecoderBatch, logits: torch.Tensor) -> torch.Tensor:
        width = batch.answer_width
        # logits[:, j] predicts token j + 1: the last A+1 hidden states predict the last A tokens.
        return nll_per_row(logits[:, :-1], batch.qa_ids[:, -width:], batch.target_mask[:, -width:])

    def answer_loss(self, batch: ReaderBatch, log_mask: torch.Tensor) -> torch.Tensor:
        """(B,) mean answer NLL, running only the question+answer tokens over the cached document keys."""
        batch = _as_decoder_batch(batch)
        out = self._qa_forward(batch, log_mask, logits_to_keep=batch.answer_width + 1)
        return self._loss_from_logits(batch, out.logits)

    def answer_token_logprobs(
        self, batch: ReaderBatch, log_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) log p of each answer token over the cached document keys, and the (B, A) answer mask."""
        batch = _as_decoder_batch(batch)
        width = batch.answer_width
        out = self._qa_forward(batch, log_mask, logits_to_keep=width + 1)
        targets, mask = batch.qa_ids[:, -width:], batch.target_mask[:, -width:]
        return token_logprobs(out.logits[:, :-1], targets, mask), mask

    @torch.no_grad()
    def document_attention(self, batch: ReaderBatch) -> torch.Tensor:
        """(B, N) attention mass of the answer-predicting tokens on each document, all documents visible."""
        batch = _as_decoder_batch(batch)
        width = batch.answer_width
        zeros = torch.zeros(batch.candidate_mask.shape, device=self.device)
        # SDPA kernels never materialise the attention weights; eager does, for this one pass.
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            out = self._qa_forward(batch, zeros, logits_to_keep=1, output_attentions=True)
        finally:
            self.model.set_attn_implementation(previous)
        q_seg = torch.where(batch.qa_valid, QA, PAD)
        key_segment = torch.cat([batch.key_segment, q_seg], dim=1)
        # The tokens that predict the answer: the one before each answer token.
        rows = slice(-width - 1, -1)
        predictors = batch.target_mask[:, -width:].to(torch.float32)
        mass = torch.stack(
            [segment_mass(a[:, :, rows].float(), key_segment, batch.num_candidates) for a in out.attentions]
        )  # (layers, B, H, A, N)
        per_token = mass.mean(dim=(0, 2))  # (B, A, N)
        return (per_token * predictors[..., None]).sum(1) / predictors.sum(1, keepdim=True).clamp(min=1)

    @torch.no_grad()
    def generate(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]], max_new_tokens: int = 32
    ) -> list[str]:
        """Greedy answers from the documents concatenated in the given order, as a RAG pipeline reads them.

        Same prompt pieces and per-document truncation as training, but one ordinary causal prompt: the
        parallel layout is built for scoring answers under a mask, and a model generating from it (every
        document at the same positions) drifts into writing another "Document:".
        """
        validate_inputs(questions, documents, [""] * len(questions))
        rows = []
        for question, docs in zip(questions, documents, strict=True):
            q_text = self._question_text(question)
            doc_ids = [t for d in docs for t in self.document_ids(d)]
            rows.append(self.prefix_ids + doc_ids + self._encode(q_text + self.prompt.answer_prefix.rstrip()))
        ids = _pad_stack(rows, self._pad_id, left=True).to(self.device)
        attention = _pad_stack([[1] * len(r) for r in rows], 0, left=True).to(self.device)
        self.model.eval()
        out = self.model.generate(
            input_ids=ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self._pad_id,
        )
        texts = self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        return [t.strip().split("\n")[0].strip() for t in texts]

    def _qa_forward(self, batch: DecoderBatch, log_mask: torch.Tensor, **model_kwargs: Any) -> Any:
        """Run the question+answer tokens over the cached prefix/document keys with log_mask on doc keys."""
        self.model.eval()
        bias = effective_log_mask(batch, log_mask, self.dtype)
        b, t = batch.qa_ids.shape
        k = batch.key_segment.shape[1]
        dev = self.device
        q_seg = torch.where(batch.qa_valid, QA, PAD)
        q_idx = (k + torch.arange(t, device=dev)).expand(b, t)
        k_seg = torch.cat([batch.key_segment, q_seg], dim=1)
        k_idx = torch.arange(k + t, device=dev).expand(b, k + t)
        k_pos = torch.cat([batch.key_position, batch.qa_position], dim=1)

        def build(window: int | None) -> torch.Tensor:
            return structural_bias(
                q_seg, q_idx, batch.qa_position, k_seg, k_idx, k_pos, bias, window, self.dtype
            )

        return self.model(
            inputs_embeds=grad_ready_embeddings(self.model.get_input_embeddings(), batch.qa_ids),
            position_ids=batch.qa_position,
            attention_mask=model_masks(self.model.config, build),
            use_cache=True,
            **model_kwargs,
            **{self._cache_kwarg: dynamic_cache(batch.keys, batch.values)},
        )

    def answer_loss_single_pass(self, batch: ReaderBatch, log_mask: torch.Tensor) -> torch.Tensor:
        """Reference for answer_loss: one forward over [prefix | docs | question+answer], no cache."""
        batch = _as_decoder_batch(batch)
        self.model.eval()
        bias = effective_log_mask(batch, log_mask, self.dtype)
        q_seg = torch.where(batch.qa_valid, QA, PAD)
        ids = torch.cat([batch.key_ids, batch.qa_ids], dim=1)
        seg = torch.cat([batch.key_segment, q_seg], dim=1)
        pos = torch.cat([batch.key_position, batch.qa_position], dim=1)
        idx = torch.arange(ids.shape[1], device=self.device).expand(ids.shape)

        def build(window: int | None) -> torch.Tensor:
            return structural_bias(seg, idx, pos, seg, idx, pos, bias, window, self.dtype)

        out = self.model(
            inputs_embeds=grad_ready_embeddings(self.model.get_input_embeddings(), ids),
            position_ids=pos,
            attention_mask=model_masks(self.model.config, build),
            use_cache=False,
            logits_to_keep=batch.answer_width + 1,
        )
        return self._loss_from_logits(batch, out.logits)


def _flatten(kv: tuple[list[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-layer keys then per-layer values, as one list (one state-cache entry)."""
    return [*kv[0], *kv[1]]


def _unflatten(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    half = len(tensors) // 2
    return tensors[:half], tensors[half:]


def _assemble_kv(rows: list[list[list[torch.Tensor]]], width: int) -> list[torch.Tensor]:
    """Per layer, the (B, H, width, D) states of each row's parts end to end, zero padded on the right.

    ``rows[b]`` holds row b's parts (prefix, then its documents), each a per-layer list of (1, H, len, D)
    tensors. One allocation and one copy per part: concatenating, then padding, copied everything twice.
    """
    out = []
    for layer, first in enumerate(rows[0][0]):
        batch = first.new_empty((len(rows), first.shape[1], width, first.shape[3]))
        for b, parts in enumerate(rows):
            start = 0
            for part in parts:
                length = part[layer].shape[2]
                batch[b, :, start : start + length] = part[layer][0]
                start += length
            batch[b, :, start:] = 0  # padding keys are masked out, but must be finite
        out.append(batch)
    return out


def _as_decoder_batch(batch: ReaderBatch) -> DecoderBatch:
    if not isinstance(batch, DecoderBatch):
        raise TypeError(f"expected a DecoderBatch from DecoderReader.prepare, got {type(batch).__name__}")
    return batch
