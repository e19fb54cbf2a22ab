"""The reader interface: a frozen LLM whose attention to each document is scaled by a mask M."""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from gumbel_rag.readers.bounds import (
    DEFAULT_MAX_ANSWER_TOKENS,
    DEFAULT_MAX_DOCUMENT_TOKENS,
    DEFAULT_MAX_QUESTION_TOKENS,
    TruncationCounts,
    bounded_text,
    check_token_bound,
    truncate_text,
)
from gumbel_rag.readers.state_cache import (
    DocumentStateCache,
    entry_key,
    model_fingerprint,
    weights_signature,
)

DEFAULT_INSTRUCTION = "Answer the question using the documents."
_FINGERPRINT_LOCK = threading.Lock()


@dataclass
class ReaderBatch:
    """Encoded questions, documents and answers; opaque to callers except for `candidate_mask`."""

    candidate_mask: torch.Tensor  # (B, N) bool, True where example b has an i-th candidate

    @property
    def batch_size(self) -> int:
        """Number of examples B."""
        return int(self.candidate_mask.shape[0])

    @property
    def num_candidates(self) -> int:
        """Width N of the (padded) candidate axis."""
        return int(self.candidate_mask.shape[1])


class Reader(ABC):
    """A frozen reader LLM scoring answers under a relaxed document mask (log M added to attention logits)."""

    device: torch.device
    model: Any
    tokenizer: Any
    max_document_tokens: int
    max_question_tokens: int
    max_answer_tokens: int
    # Reuses document states across calls (epochs, questions sharing a document); None: recompute.
    state_cache: DocumentStateCache | None = None
    # Name of the transformers auto class that loads this kind of reader.
    auto_model_class: ClassVar[str]

    @abstractmethod
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        max_document_tokens: int = DEFAULT_MAX_DOCUMENT_TOKENS,
        max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS,
        max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
        state_cache: DocumentStateCache | None = None,
    ) -> None:
        """Wrap a loaded model and tokenizer, frozen."""

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device | None = None,
        max_document_tokens: int = DEFAULT_MAX_DOCUMENT_TOKENS,
        max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS,
        max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
        state_cache: DocumentStateCache | None = None,
        trust_remote_code: bool = False,
        **model_kwargs: Any,
    ) -> Reader:
        """Load the model with ``cls.auto_model_class`` and its tokenizer from a hub name or directory."""
        import transformers

        auto = getattr(transformers, cls.auto_model_class)
        # The hub options reach the tokenizer too, so that both come from the same revision and cache.
        hub = {
            k: model_kwargs[k]
            for k in ("local_files_only", "revision", "token", "cache_dir")
            if k in model_kwargs
        }
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **hub
        )
        model = auto.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **model_kwargs)
        return cls(
            model,
            tokenizer,
            device=device,
            max_document_tokens=max_document_tokens,
            max_question_tokens=max_question_tokens,
            max_answer_tokens=max_answer_tokens,
            state_cache=state_cache,
        )

    def _state_context(self) -> dict[str, Any]:
        """What a document's states depend on besides the model and the document's tokens."""
        return {"max_document_tokens": self.max_document_tokens}

    def state_fingerprint(self) -> str:
        """Identity of the reader for :attr:`state_cache` keys: weights, config, dtype, device, prompt.

        Hashing the weights reads them once (about a second for SmolLM2-135M); the result is kept until
        the weights' cheap signature (tensor objects, storages, version counters) or the context changes.
        """
        attention = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        context = json.dumps(self._state_context(), sort_keys=True)
        signature = (weights_signature(self.model), str(self.dtype), str(self.device), attention, context)
        memo = getattr(self, "_fingerprint_memo", None)
        if memo is not None and memo[0] == signature:
            return memo[1]
        import transformers

        with _FINGERPRINT_LOCK:  # one thread hashes the weights; the others then find its result
            memo = getattr(self, "_fingerprint_memo", None)
            if memo is not None and memo[0] == signature:
                return memo[1]
            payload = {
                "reader": type(self).__qualname__,
                "model": model_fingerprint(self.model),
                "dtype": str(self.dtype),
                "device": self.device.type,
                "attention": attention,
                "context": context,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
            fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            self._fingerprint_memo = (signature, fingerprint)
        return fingerprint

    def cached_states(
        self,
        kind: str,
        items: Sequence[tuple[int, ...]],
        compute: Callable[[list[tuple[int, ...]]], list[list[torch.Tensor]]],
    ) -> dict[tuple[int, ...], list[torch.Tensor]]:
        """The states of each distinct token-id tuple: from :attr:`state_cache` where held, else computed.

        ``compute`` gets the items not held (in order) and returns their tensors, which are then stored.
        Without a state cache every item is computed.
        """
        cache = self.state_cache
        if cache is None:
            return dict(zip(items, compute(list(items)), strict=True))
        fingerprint = self.state_fingerprint()
        keys = {item: entry_key(fingerprint, kind, item) for item in items}
        found: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for item, key in keys.items():
            tensors = cache.get(key, self.device)
            if tensors is not None:
                found[item] = tensors
        missing = [item for item in keys if item not in found]
        if missing:
            for item, tensors in zip(missing, compute(missing), strict=True):
                cache.put(keys[item], tensors)
                found[item] = tensors
        return {item: found[item] for item in items}

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the reader's weights (and of its attention masks)."""
        return next(self.model.parameters()).dtype

    @abstractmethod
    def prepare(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> ReaderBatch:
        """Tokenize and encode every document once under torch.no_grad() (states reused by answer_loss)."""

    def _set_bounds(
        self,
        max_document_tokens: int,
        max_question_tokens: int,
        max_answer_tokens: int,
        *,
        min_document_tokens: int = 1,
    ) -> None:
        """Validate and keep the size bounds (bounds.py), and start counting what gets cut."""
        self.max_document_tokens = check_token_bound(
            max_document_tokens, "max_document_tokens", min_document_tokens
        )
        self.max_question_tokens = check_token_bound(max_question_tokens, "max_question_tokens")
        self.max_answer_tokens = check_token_bound(max_answer_tokens, "max_answer_tokens")
        self._truncations = TruncationCounts(type(self).__name__)

    @property
    def truncations(self) -> dict[str, int]:
        """How many inputs were cut, by kind: "questions" (to max_question_tokens), "documents"."""
        return self._truncations.as_dict()

    def bounded_question(self, question: str) -> str:
        """The question cut after its first max_question_tokens tokens (counted, warned once)."""
        kept, cut = truncate_text(self.tokenizer, question, self.max_question_tokens)
        if cut:
            self._truncations.add(
                "questions",
                f"a question of more than {self.max_question_tokens} tokens was cut to max_question_tokens "
                f"({len(question)} characters, starting {question[:40]!r})",
            )
        return kept

    def _answer_length(self, answer: str) -> int:
        """Tokens the answer takes as the loss target (called on a bounded prefix only)."""
        return len(self.tokenizer(answer, add_special_tokens=False)["input_ids"])

    def skip_reason(self, question: str, answer: str) -> str | None:
        """Why the reader cannot train on this example (answer empty or over max_answer_tokens), or None.

        The trainer leaves such rows out (and counts them); ``prepare`` raises ValueError on one.
        """
        if not answer.strip():
            return "the answer is empty"
        piece = bounded_text(self.tokenizer, answer, self.max_answer_tokens)
        if self._answer_length(piece) > self.max_answer_tokens:
            return f"the answer has more than max_answer_tokens={self.max_answer_tokens} tokens"
        return None

    def check_trainable(self, questions: Sequence[str], answers: Sequence[str]) -> None:
        """Raise ValueError naming the first example :meth:`skip_reason` refuses."""
        for b, (question, answer) in enumerate(zip(questions, answers, strict=True)):
            reason = self.skip_reason(question, answer)
            if reason is not None:
                raise ValueError(
                    f"example {b} of the batch (question {question[:60]!r}): {reason}; leave such rows out "
                    "of training (reader.skip_reason(question, answer) tells which)"
                )

    @abstractmethod
    def answer_loss(self, batch: ReaderBatch, log_mask: torch.Tensor) -> torch.Tensor:
        """(B,) mean negative log-likelihood per answer token given log_mask (B, N) = log M."""

    def answer_loss_single_pass(self, batch: ReaderBatch, log_mask: torch.Tensor) -> torch.Tensor:
        """Reference for `answer_loss` that recomputes the document states in one forward (slow)."""
        raise NotImplementedError(f"{type(self).__name__} has no single-pass reference")

    def answer_token_logprobs(
        self, batch: ReaderBatch, log_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) log-probability of each answer token given log_mask, and the (B, A) mask of real tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not expose per-token log-probabilities")

    def document_attention(self, batch: ReaderBatch) -> torch.Tensor:
        """(B, N) share of the answer tokens' attention on each document (mean over layers, heads, tokens)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose attention to documents")

    def generate(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]], max_new_tokens: int = 32
    ) -> list[str]:
        """Greedy answers to each question from its documents (read the same way as in training)."""
        raise NotImplementedError(f"{type(self).__name__} cannot generate answers")

    def loss(
        self,
        questions: Sequence[str],
        documents: Sequence[Sequence[str]],
        answers: Sequence[str],
        log_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Convenience: prepare + answer_loss; log_mask None means every document fully visible."""
        batch = self.prepare(questions, documents, answers)
        if log_mask is None:
            log_mask = torch.zeros(batch.candidate_mask.shape, device=self.device)
        return self.answer_loss(batch, log_mask)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Put a reader model in eval mode with no parameter requiring grad."""
    model.requires_grad_(False)
    model.eval()
    return model


def validate_inputs(
    questions: Sequence[str], documents: Sequence[Sequence[str]], answers: Sequence[str]
) -> None:
    """Raise ValueError unless questions, documents and answers describe the same B examples."""
    if isinstance(questions, str) or isinstance(answers, str):
        raise TypeError("questions and answers must be sequences of strings, not a single string")
    if not questions:
        raise ValueError("empty batch: need at least one question")
    if not (len(questions) == len(documents) == len(answers)):
        raise ValueError(
            f"got {len(questions)} questions, {len(documents)} document lists and {len(answers)} answers"
        )
    for docs in documents:
        if isinstance(docs, str):
            raise TypeError("documents must be a sequence of document lists (one list per question)")


def candidate_mask_for(documents: Sequence[Sequence[str]], device: torch.device) -> torch.Tensor:
    """(B, N) bool mask of real candidates, N being the largest candidate count."""
    width = max((len(d) for d in documents), default=0)
    mask = torch.zeros(len(documents), width, dtype=torch.bool)
    for b, docs in enumerate(documents):
        mask[b, : len(docs)] = True
    return mask.to(device)


def effective_log_mask(batch: ReaderBatch, log_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """log_mask cast to the reader's dtype/device with padded candidates set to -inf (differentiable)."""
    expected = tuple(batch.candidate_mask.shape)
    if tuple(log_mask.shape) != expected:
        raise ValueError(f"log_mask has shape {tuple(log_mask.shape)}, expected {expected} (B, N)")
    cand = batch.candidate_mask
    log_mask = log_mask.to(device=cand.device, dtype=dtype)
    # torch.where, not multiplication: a 0 * -inf would turn into NaN and poison the gradient.
    return torch.where(cand, log_mask, torch.full_like(log_mask, float("-inf")))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token (float32 or wider), 0 where target_mask is False."""
    # Half-precision log-softmax over a large vocabulary loses too much; never go below float32.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logp = torch.log_softmax(logits, dim=-1)
    token_logp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(target_mask, token_logp, torch.zeros_like(token_logp))


def nll_per_row(logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` over positions where target_mask is True, per row."""
    counts = target_mask.sum(-1).clamp(min=1)
    return -token_logprobs(logits, targets, target_mask).sum(-1) / counts


def segment_mass(weights: torch.Tensor, key_segment: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """Sum attention weights (B, H, Q, K) over the keys of each candidate: (B, H, Q, N)."""
    onehot = (key_segment[:, :, None] == torch.arange(num_candidates, device=key_segment.device)).to(
        weights.dtype
    )
    return torch.einsum("bhqk,bkn->bhqn", weights, onehot)


def grad_ready_embeddings(embedding: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings that require grad when grad is on, so every attention call has q requiring grad."""
    # Without this the first attention layer sees a mask as its only input needing a gradient, and CUDA's
    # memory-efficient SDPA then skips the logsumexp its backward needs ("LSE is not correctly aligned",
    # pytorch/pytorch#148476, seen with torch 2.11 on an H100). The extra backward reaches one frozen
    # embedding output, nothing else.
    embeds = embedding(ids)
    if torch.is_grad_enabled():
        embeds = embeds.detach().requires_grad_(True)
    return embeds


def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """The requested device, else the model's, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    if model is not None:
        try:
            return next(model.parameters()).device
        except StopIteration:
            pass
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 on a CUDA device that supports it, else None (keep the checkpoint's dtype)."""
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
