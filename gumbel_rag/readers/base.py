"""The reader interface: a frozen LLM whose attention to each document is scaled by a mask M."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

DEFAULT_INSTRUCTION = "Answer the question using the documents."


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
    # Name of the transformers auto class that loads this kind of reader.
    auto_model_class: ClassVar[str]

    @abstractmethod
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        max_document_tokens: int = 128,
    ) -> None:
        """Wrap a loaded model and tokenizer, frozen."""

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device | None = None,
        max_document_tokens: int = 128,
        trust_remote_code: bool = False,
        **model_kwargs: Any,
    ) -> Reader:
        """Load the model with ``cls.auto_model_class`` and its tokenizer from a hub name or directory."""
        import transformers

        auto = getattr(transformers, cls.auto_model_class)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code
        )
        model = auto.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **model_kwargs)
        return cls(model, tokenizer, device=device, max_document_tokens=max_document_tokens)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the reader's weights (and of its attention masks)."""
        return next(self.model.parameters()).dtype

    @abstractmethod
    def prepare(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> ReaderBatch:
        """Tokenize and encode every document once under torch.no_grad() (states reused by answer_loss)."""

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
