"""GumbelReranker: one scoring core for inference and end-to-end training.

A bi-encoder (sentence-transformers ``SentenceTransformer``) scores ``cos(q, d) / temperature``;
a cross-encoder (sentence-transformers ``CrossEncoder`` over any Hugging Face
sequence-classification model) scores its relevance logit. Inference and training run the
same ``_score_flat`` code: inference wraps it in ``torch.inference_mode``, training keeps grad.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from torch import nn

from gumbel_rag.defaults import default_reranker_path
from gumbel_rag.embedding_cache import EmbeddingCache
from gumbel_rag.modelfiles import ModelKind, detect_kind, resolve_model_dir

_COPY_LOCK = threading.Lock()

__all__ = ["GumbelReranker", "RankedDocument"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "gumbel_rag.json"
DEFAULT_TEMPERATURE = 0.05

Backend = Literal["torch", "openvino"]
"""Inference backends: ``"torch"`` (exact, trainable) or ``"openvino"`` (compiled, CPU, inference only)."""
BACKENDS: tuple[str, ...] = ("torch", "openvino")
# Cost of one more forward call, in tokens of compute, for splitting inference inputs into batches (see
# _length_buckets). Measured on 2 idle cores (all-MiniLM-L6-v2, 10-100 candidates of 20-400 tokens): a
# cost of 32-128 ran at 1.09-1.17x stock sentence-transformers, the fewest calls (a cost of 1e6, which
# also pads the query to the longest document) at 0.92-1.03x; docs/performance.md has the table. On
# heavily loaded cores calls cost more (each op waits for its threads); 128 is the largest cost that
# kept the idle-machine gain.
CALL_COST_TOKENS = 128


@dataclass(frozen=True)
class RankedDocument:
    """One reranked input: its position in the input list, its text and its score."""

    index: int
    text: str
    score: float


def _check_texts(documents: Sequence[Any], what: str = "document") -> list[str]:
    if isinstance(documents, str):
        raise TypeError(f"expected a sequence of {what}s, got a single string")
    texts = list(documents)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what} at index {i} is {type(text).__name__}, expected str")
    return texts


def _flatten(
    queries: Sequence[str], documents: Sequence[Sequence[str]]
) -> tuple[list[str], list[str], list[int], list[int]]:
    """Validate a batch and flatten it to (queries, documents, query index per document, counts)."""
    query_list = _check_texts(queries, "query")
    if len(query_list) != len(documents):
        raise ValueError(f"got {len(query_list)} queries but {len(documents)} document lists")
    flat: list[str] = []
    query_of: list[int] = []
    counts: list[int] = []
    for q, docs in enumerate(documents):
        texts = _check_texts(docs)
        flat.extend(texts)
        query_of.extend([q] * len(texts))
        counts.append(len(texts))
    return query_list, flat, query_of, counts


def _length_buckets(
    lengths: Sequence[int], batch_size: int, call_cost: float | None = None
) -> Iterator[list[int]]:
    """Yield index batches of similar length, longest first, so padding is not paid for.

    Without ``call_cost``: consecutive chunks of ``batch_size``. With it (token lengths): the split of
    the sorted inputs into batches of at most ``batch_size`` that minimises padded tokens plus
    ``call_cost`` per batch (exact dynamic programme). On 20-400 token inputs fixed chunks of 32 spend
    17-26% of the compute on padding; this spends a few percent, without many tiny forward calls.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if call_cost is None:
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]
        return
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest batching of the j longest inputs
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - batch_size), j):
            # Sorted longest first, so batch order[i:j] is padded to lengths[order[i]].
            cost = best[i] + lengths[order[i]] * (j - i) + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds = []
    j = n
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    for i, j in reversed(bounds):
        yield order[i:j]


class GumbelReranker(nn.Module):
    """A reranker that scores (query, document) pairs; trainable end to end with Gumbel Reranking."""

    def __init__(
        self,
        model: SentenceTransformer | CrossEncoder,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        batch_size: int = 32,
        cache_max_entries: int | None = None,
        cache_max_bytes: int | None = None,
    ) -> None:
        """Wrap a loaded sentence-transformers model; use :meth:`from_pretrained` to load one.

        ``cache_max_entries`` / ``cache_max_bytes`` (bi-encoders only) turn on an LRU cache of document
        embeddings keyed by text, used by the inference methods, bounded by entries and/or bytes.
        """
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.kind: ModelKind = "cross-encoder" if isinstance(model, CrossEncoder) else "bi-encoder"
        self.temperature = float(temperature)
        self.batch_size = batch_size
        self.backend: Backend = "torch"
        # Set by gumbel_rag.fast_backends for backend != "torch": features -> features, no autograd.
        self._fast_backbone: Any = None
        self.embedding_cache: EmbeddingCache | None = None
        if cache_max_entries is not None or cache_max_bytes is not None:
            if self.kind != "bi-encoder":
                raise ValueError(
                    "an embedding cache needs a bi-encoder: a cross-encoder scores each (query, document) "
                    "pair jointly, so there is no per-document embedding to reuse"
                )
            self.embedding_cache = EmbeddingCache(max_entries=cache_max_entries, max_bytes=cache_max_bytes)

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        *,
        kind: Literal["auto", "bi-encoder", "cross-encoder"] = "auto",
        device: str | torch.device | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        temperature: float | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        backend: Backend = "torch",
        cache_max_entries: int | None = None,
        cache_max_bytes: int | None = None,
    ) -> GumbelReranker:
        """Load a bi-encoder or cross-encoder; ``None`` loads the offline default (all-MiniLM-L6-v2).

        ``backend="torch"`` is the exact path (also the only trainable one); see :data:`Backend` for the
        opt-in fast inference backends. ``cache_max_entries`` / ``cache_max_bytes`` turn on the
        bi-encoder's document-embedding cache (see :class:`~gumbel_rag.embedding_cache.EmbeddingCache`).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        path = default_reranker_path() if name_or_path is None else resolve_model_dir(name_or_path)
        detected, reason = detect_kind(path)
        if kind == "auto":
            kind = detected
        elif kind not in ("bi-encoder", "cross-encoder"):
            raise ValueError(f"kind must be 'auto', 'bi-encoder' or 'cross-encoder', got {kind!r}")
        elif kind != detected:
            raise ValueError(
                f"{name_or_path or path} looks like a {detected} ({reason}), not a {kind}; "
                f"pass kind='{detected}' or kind='auto'"
            )
        saved = _read_config(path)
        device_str = str(device) if device is not None else None
        common: dict[str, Any] = {
            "device": device_str,
            "trust_remote_code": trust_remote_code,
            "local_files_only": True,
            "model_kwargs": model_kwargs,
        }
        if kind == "cross-encoder":
            model: SentenceTransformer | CrossEncoder = CrossEncoder(str(path), **common)
        else:
            model = SentenceTransformer(str(path), **common)
        if max_length is not None:
            model.max_seq_length = max_length
        temp = temperature if temperature is not None else saved.get("temperature", DEFAULT_TEMPERATURE)
        reranker = cls(
            model,
            temperature=temp,
            batch_size=batch_size,
            cache_max_entries=cache_max_entries,
            cache_max_bytes=cache_max_bytes,
        )
        if backend != "torch":
            from gumbel_rag.fast_backends import accelerate_model

            accelerate_model(reranker, backend)
        # Like transformers' from_pretrained: ready for inference; trainers call .train().
        return reranker.eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write a sentence-transformers directory (safetensors) that stock tools load too."""
        path = Path(path)
        self.model.save_pretrained(str(path), safe_serialization=True)
        config = {"kind": self.kind, "temperature": self.temperature, "format_version": 1}
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf8")

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self.model.device

    @property
    def max_length(self) -> int | None:
        """Token limit per input (longer inputs are truncated)."""
        return self.model.max_seq_length

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer of the underlying model."""
        return self.model.tokenizer

    # ------------------------------------------------------------------ the shared scoring core

    def _features(self, inputs: list[Any]) -> dict[str, Any]:
        features = self.model.preprocess(inputs)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def _run_many(self, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The sentence-transformers forward of each batch, or the fast backend's (inference only).

        The fast backend gets all batches at once so that it can run them concurrently.
        """
        if self._fast_backbone is not None:
            if torch.is_grad_enabled():
                raise RuntimeError(
                    f"backend={self.backend!r} is inference-only; load with backend='torch' to train"
                )
            return self._fast_backbone.run_many(batches)
        return [self.model(features) for features in batches]

    def _embed_many(self, batches: list[list[str]]) -> list[torch.Tensor]:
        """Unit-normalised embeddings of each batch of texts."""
        outs = self._run_many([self._features(texts) for texts in batches])
        return [nn.functional.normalize(out["sentence_embedding"].float(), dim=-1) for out in outs]

    def _embed(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.empty(0, self._embedding_dim(), device=self.device)
        return self._embed_many([texts])[0]

    def _embedding_dim(self) -> int:
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else None
        if dim is None:
            dim = self.model.get_sentence_embedding_dimension()
        return int(dim)

    def _cross_scores_many(self, batches: list[list[tuple[str, str]]]) -> list[torch.Tensor]:
        """One relevance logit per pair, for each batch of pairs."""
        outs = self._run_many([self._features(pairs) for pairs in batches])
        return [self._logit(out["scores"].float()) for out in outs]

    @staticmethod
    def _logit(logits: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 1:
            return logits
        if logits.shape[-1] == 1:
            return logits[:, 0]
        if logits.shape[-1] == 2:
            # Two-class heads: the log-odds of "relevant" is the ranking-equivalent single logit.
            return logits[:, 1] - logits[:, 0]
        raise ValueError(
            f"cross-encoder has {logits.shape[-1]} output labels; only 1 (score) or 2 (irrelevant/relevant) "
            "can be used for ranking"
        )

    def _bucketed(
        self, lengths: list[int], items: Sequence[Any], run_many: Any, call_cost: float | None = None
    ) -> torch.Tensor:
        """Apply ``run_many(batches of items) -> [Tensor per batch]`` to length buckets, in input order."""
        batch_size = self.batch_size
        if self._fast_backbone is not None:
            # Small batches, longest first, keep every concurrent stream busy until the end.
            batch_size = min(batch_size, self._fast_backbone.max_batch_size)
        buckets = list(_length_buckets(lengths, batch_size, call_cost))
        chunks = run_many([[items[i] for i in idx] for idx in buckets])
        order = [i for idx in buckets for i in idx]
        inverse = torch.empty(len(order), dtype=torch.long, device=self.device)
        inverse[torch.tensor(order, device=self.device)] = torch.arange(len(order), device=self.device)
        return torch.cat(chunks)[inverse]

    def _call_cost(self) -> float:
        """Tokens of compute one more forward call is worth (see _length_buckets)."""
        if self._fast_backbone is not None:
            return float(self._fast_backbone.call_cost_tokens)
        return CALL_COST_TOKENS

    def _score_flat(self, queries: list[str], documents: list[str], query_of: list[int]) -> torch.Tensor:
        """Score pair p = (queries[query_of[p]], documents[p]), batched by length; keeps grad."""
        if not documents:
            return torch.empty(0, device=self.device)
        if self.kind == "bi-encoder":
            q_emb = self._embed(queries)
            d_emb = self._bucketed([len(d) for d in documents], documents, self._embed_many)
            q_index = torch.tensor(query_of, device=self.device)
            return (q_emb[q_index] * d_emb).sum(-1) / self.temperature
        pairs = [(queries[query_of[p]], documents[p]) for p in range(len(documents))]
        return self._bucketed([len(a) + len(b) for a, b in pairs], pairs, self._cross_scores_many)

    def _token_lengths(self, inputs: list[Any]) -> list[int]:
        """Tokens per input (special tokens included, before truncation): the true cost of each input."""
        if not inputs:
            return []
        tok = self._counting_tokenizer()
        if isinstance(inputs[0], tuple):
            enc = tok([a for a, _ in inputs], [b for _, b in inputs], add_special_tokens=True, verbose=False)
        else:
            enc = tok(inputs, add_special_tokens=True, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def _counting_tokenizer(self) -> Any:
        """A private copy of the tokenizer for counting tokens, made once.

        A fast tokenizer keeps its padding/truncation settings in one shared Rust object that every call
        resets; an unpadded count on the model's own tokenizer could strip the padding from a batch that
        another thread is tokenizing at that moment.
        """
        with _COPY_LOCK:
            if self.__dict__.get("_count_tok") is None:
                self.__dict__["_count_tok"] = copy.deepcopy(self.tokenizer)
            return self.__dict__["_count_tok"]

    def _warn_truncated(self, lengths: list[int], total: int) -> None:
        limit = self.max_length
        over = 0 if limit is None else sum(n > limit for n in lengths)
        if over:
            warnings.warn(
                f"{over} of {total} inputs exceed the model's limit of {limit} tokens and were truncated",
                stacklevel=4,
            )

    def _cache_fingerprint(self) -> tuple[Any, ...]:
        """Identifies the weights and settings embeddings depend on; any optimizer step changes it."""
        # Tensor._version counts in-place writes (optimizer steps, load_state_dict's copy_), so this is
        # cheap and catches training between calls; id/dtype/device catch replaced or moved parameters.
        params = tuple((id(p), p._version, p.dtype, p.device) for p in self.model.parameters())
        return (params, self.max_length, self.backend)

    def _inference_scores(self, queries: list[str], documents: list[str], query_of: list[int]) -> list[float]:
        """No-grad scores of (queries[query_of[p]], documents[p]): token-length buckets, cache, fast path."""
        if not documents:
            return []
        limit = self.max_length
        if self.kind == "cross-encoder":
            pairs = [(queries[q], d) for q, d in zip(query_of, documents, strict=True)]
            lengths = self._token_lengths(pairs)
            self._warn_truncated(lengths, len(pairs))
            if limit is not None:
                lengths = [min(n, limit) for n in lengths]
            scores = self._bucketed(lengths, pairs, self._cross_scores_many, self._call_cost())
            return scores.float().cpu().tolist()
        # Bi-encoder: one embedding per distinct text, whatever query it comes with.
        unique: dict[str, int] = {}
        doc_slot = [unique.setdefault(d, len(unique)) for d in documents]
        texts = list(unique)
        cache = self.embedding_cache
        cached: list[torch.Tensor | None] = [None] * len(texts)
        if cache is not None:
            cache.check_fingerprint(self._cache_fingerprint())
            cached = cache.get_many(texts)
        missing = [i for i, e in enumerate(cached) if e is None]
        # Queries ride in the same length-sorted batches as the documents: one forward call fewer.
        to_embed = list(queries) + [texts[i] for i in missing]
        lengths = self._token_lengths(to_embed)
        # Counted per (query, document) pair as before; documents served from the cache were warned about
        # when they were first embedded.
        text_length = dict(zip((texts[i] for i in missing), lengths[len(queries) :], strict=True))
        self._warn_truncated([text_length.get(d, 0) for d in documents], len(documents))
        if limit is not None:
            lengths = [min(n, limit) for n in lengths]
        emb = self._bucketed(lengths, to_embed, self._embed_many, self._call_cost()).cpu()
        q_emb, new = emb[: len(queries)], emb[len(queries) :]
        if cache is not None and missing:
            cache.put_many([texts[i] for i in missing], list(new))
        d_emb = torch.empty(len(texts), q_emb.shape[1], dtype=q_emb.dtype)
        if missing:
            d_emb[torch.tensor(missing)] = new
        hits = [i for i, e in enumerate(cached) if e is not None]
        if hits:
            d_emb[torch.tensor(hits)] = torch.stack([cached[i] for i in hits]).to(d_emb.dtype)  # type: ignore[misc]
        q_index = torch.tensor(query_of)
        scores = (q_emb[q_index] * d_emb[torch.tensor(doc_slot)]).sum(-1) / self.temperature
        return scores.tolist()

    # ------------------------------------------------------------------ differentiable path (training)

    def forward(
        self, queries: Sequence[str], documents: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score a batch with grad: returns scores (B, N) and a bool mask (B, N) of real candidates."""
        queries, flat, query_of, counts = _flatten(queries, documents)
        flat_scores = self._score_flat(queries, flat, query_of)
        scores = nn.utils.rnn.pad_sequence(list(flat_scores.split(counts)), batch_first=True)
        valid = nn.utils.rnn.pad_sequence(
            [torch.ones(n, dtype=torch.bool, device=self.device) for n in counts], batch_first=True
        )
        return scores, valid

    # ------------------------------------------------------------------ inference

    def score_batch(self, queries: Sequence[str], documents: Sequence[Sequence[str]]) -> list[list[float]]:
        """Score each query's documents (no grad, one length-bucketed pass over all pairs)."""
        queries, flat, query_of, counts = _flatten(queries, documents)
        # Identical pairs are scored once: RAG candidate lists repeat, and equal inputs must tie exactly.
        slot: dict[tuple[int, str], int] = {}
        pair_slot = [slot.setdefault((q, d), len(slot)) for q, d in zip(query_of, flat, strict=True)]
        unique_docs = [d for _, d in slot]
        unique_query_of = [q for q, _ in slot]
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                unique_values = self._inference_scores(queries, unique_docs, unique_query_of)
        finally:
            self.train(was_training)
        values = [unique_values[i] for i in pair_slot]
        out, offset = [], 0
        for n in counts:
            out.append(values[offset : offset + n])
            offset += n
        return out

    def score(self, query: str, documents: Sequence[str]) -> list[float]:
        """Score documents against one query (higher is more relevant)."""
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        return self.score_batch([query], [documents])[0]

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> list[RankedDocument]:
        """Rank documents by score (ties keep input order), then apply top_k and score_threshold."""
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        texts = _check_texts(documents)
        scores = self.score(query, texts)
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        ranked = [RankedDocument(index=i, text=texts[i], score=scores[i]) for i in order]
        if score_threshold is not None:
            ranked = [r for r in ranked if r.score >= score_threshold]
        return ranked if top_k is None else ranked[:top_k]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings (bi-encoders only), e.g. for dense candidate mining."""
        if self.kind != "bi-encoder":
            raise TypeError("encode() needs a bi-encoder; a cross-encoder scores pairs only")
        texts = _check_texts(texts, "text")
        was_training = self.training
        self.eval()
        try:
            if not texts:
                return torch.empty(0, self._embedding_dim())
            out = self._bucketed([len(t) for t in texts], texts, self._embed_many)
        finally:
            self.train(was_training)
        return out.cpu()


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_NAME
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from exc
