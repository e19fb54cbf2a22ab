"""GumbelReranker: the reranker that serves inference and is trained end to end with Gumbel Reranking.

A bi-encoder (sentence-transformers ``SentenceTransformer``) scores ``cos(q, d) / temperature``;
a cross-encoder (sentence-transformers ``CrossEncoder`` over any Hugging Face
sequence-classification model) scores its relevance logit.

Training and inference share the model call and the score of each kind (``_embed_many`` then cosine /
temperature; ``_cross_scores_many`` then the relevance logit), but batch differently, on purpose:

- training (``forward`` -> ``_score_flat``) keeps grad and scores every (query, document) pair as given,
  in batches of similar *character* length, so a seeded run draws the same dropout for the same inputs;
- inference (``score_batch`` -> ``_inference_scores``) runs without grad, scores each distinct pair once
  (equal inputs tie exactly), batches by *token* length with a per-call cost (``_length_buckets``), serves
  bi-encoder documents from the embedding cache, and may run on a compiled backend (``backend=``).

Both paths cut every text to ``max_length * CHARS_PER_TOKEN`` characters before tokenizing it, so an
enormous document costs no more than a long one; such inputs count as truncated. Inference reports
truncation on every call: a WARNING log line with the count, and ``truncated`` on the ranking.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from torch import nn

from gumbel_rag.embedding_cache import EmbeddingCache
from gumbel_rag.errors import ConfigError, ModelLoadError
from gumbel_rag.fast_backends import load_backbone
from gumbel_rag.hub import HubOptions, describe_load_error, trust_gate
from gumbel_rag.modelfiles import CONFIG_NAME, KindOption, ModelKind, locate_model
from gumbel_rag.serving_options import Backend, check_option

_COPY_LOCK = threading.Lock()

__all__ = ["CHARS_PER_TOKEN", "GumbelReranker", "RankedDocument", "Ranking"]

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.05
# Characters of one text tokenized at most, per token of max_length: longer texts are cut first (and
# count as truncated), so a 10M-character document costs what a long one does. English averages ~4.5
# characters a word-piece token; the densest HotpotQA paragraph has 6.6, so 20 keeps every token that
# max_length would keep for ordinary text.
CHARS_PER_TOKEN = 20
# Cost of one more forward call, in tokens of compute, for splitting inference inputs into batches (see
# _length_buckets). Measured on 2 idle cores (all-MiniLM-L6-v2, 10-100 candidates of 20-400 tokens): a
# cost of 32-128 ran at 1.09-1.17x stock sentence-transformers, the fewest calls (a cost of 1e6, which
# also pads the query to the longest document) at 0.92-1.03x; docs/performance.md has the table. On
# heavily loaded cores calls cost more (each op waits for its threads); 128 is the largest cost that
# kept the idle-machine gain.
CALL_COST_TOKENS = 128


@dataclass(frozen=True)
class RankedDocument:
    """One reranked input: its position in the input list, its text, its score, whether it was truncated."""

    index: int
    text: str
    score: float
    truncated: bool = False


class Ranking(list[RankedDocument]):
    """The documents :meth:`GumbelReranker.rerank` keeps, best first, and ``truncated``: how many of all the
    scored inputs (kept or not) exceeded ``max_length`` and were cut."""

    truncated: int = 0


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
        backbone: Any = None,
    ) -> None:
        """Wrap a loaded sentence-transformers model; use :meth:`from_pretrained` to load one.

        ``cache_max_entries`` / ``cache_max_bytes`` (bi-encoders only) turn on an LRU cache of document
        embeddings keyed by text, used by the inference methods, bounded by entries and/or bytes.
        ``backbone``: an inference backend from :func:`gumbel_rag.fast_backends.load_backbone` that runs
        the model's first module instead of torch (inference only); ``None`` is the exact torch path.
        """
        super().__init__()
        batch_size = check_option("batch_size", batch_size)
        if not isinstance(temperature, int | float) or not math.isfinite(temperature) or temperature <= 0:
            raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.model = model
        self.kind: ModelKind = "cross-encoder" if isinstance(model, CrossEncoder) else "bi-encoder"
        self.temperature = float(temperature)
        self.batch_size = batch_size
        self._fast_backbone: Any = backbone
        self.backend: Backend = "torch" if backbone is None else backbone.name
        self.embedding_cache: EmbeddingCache | None = None
        if cache_max_entries is not None or cache_max_bytes is not None:
            if self.kind != "bi-encoder":
                raise ConfigError(
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
        kind: KindOption = "auto",
        device: str | torch.device | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        temperature: float | None = None,
        trust_remote_code: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        config_kwargs: Mapping[str, Any] | None = None,
        backend: Backend = "torch",
        cache_max_entries: int | None = None,
        cache_max_bytes: int | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_folder: str | Path | None = None,
    ) -> GumbelReranker:
        """Load a bi-encoder or cross-encoder; ``None`` loads the offline default (all-MiniLM-L6-v2).

        ``name_or_path`` is a local directory or a Hugging Face Hub name, downloaded into the Hugging Face
        cache on first use unless ``local_files_only=True`` or ``HF_HUB_OFFLINE=1`` (``revision``,
        ``token`` and ``cache_folder`` pass through; see :mod:`gumbel_rag.hub`). ``model_kwargs``,
        ``tokenizer_kwargs`` and ``config_kwargs`` go to transformers; none of them may set
        ``trust_remote_code`` (:func:`gumbel_rag.hub.trust_gate`). ``backend="torch"`` is the exact path
        (also the only trainable one); see :data:`Backend` for the opt-in fast inference backends.
        ``cache_max_entries`` / ``cache_max_bytes`` turn on the bi-encoder's document-embedding cache (see
        :class:`~gumbel_rag.embedding_cache.EmbeddingCache`). Raises ModelLoadError (one line) for a model
        that cannot be had and ConfigError for options that cannot work.
        """
        backend = check_option("backend", backend)
        kind = check_option("kind", kind)
        max_length = check_option("max_length", max_length)
        batch_size = check_option("batch_size", batch_size)
        trust, kwargs = trust_gate(
            trust_remote_code,
            model_kwargs=model_kwargs,
            tokenizer_kwargs=tokenizer_kwargs,
            config_kwargs=config_kwargs,
        )
        hub = HubOptions(
            local_files_only, revision, token, None if cache_folder is None else str(cache_folder)
        )
        source = locate_model(name_or_path, hub)
        detected, reason = source.kind()
        if kind == "auto":
            kind = detected
        elif kind != detected:
            raise ConfigError(
                f"{source.label} looks like a {detected} ({reason}), not a {kind}; "
                f"pass kind='{detected}' or kind='auto'"
            )
        loader = CrossEncoder if kind == "cross-encoder" else SentenceTransformer
        try:
            model: SentenceTransformer | CrossEncoder = loader(
                source.name,
                device=None if device is None else str(device),
                trust_remote_code=trust,
                model_kwargs=kwargs["model_kwargs"],
                processor_kwargs=kwargs["tokenizer_kwargs"],
                config_kwargs=kwargs["config_kwargs"],
                # A local directory is read as it is; only a hub name may be downloaded.
                **(hub.sentence_transformers_kwargs() if not source.is_local else {"local_files_only": True}),
            )
        except (OSError, ValueError, ImportError) as exc:
            raise ModelLoadError(describe_load_error(source.label, exc, hub)) from exc
        if max_length is not None:
            model.max_seq_length = max_length
        temp = temperature if temperature is not None else source.saved_config().get("temperature")
        reranker = cls(
            model,
            temperature=DEFAULT_TEMPERATURE if temp is None else temp,
            batch_size=batch_size,
            cache_max_entries=cache_max_entries,
            cache_max_bytes=cache_max_bytes,
            backbone=load_backbone(model, kind, backend),
        )
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

    @property
    def max_chars(self) -> int | None:
        """Characters of one text tokenized at most (``max_length * CHARS_PER_TOKEN``); the rest is cut."""
        limit = self.max_length
        return None if limit is None else limit * CHARS_PER_TOKEN

    def _clip(self, text: str) -> str:
        limit = self.max_chars
        return text if limit is None or len(text) <= limit else text[:limit]

    def _score_flat(self, queries: list[str], documents: list[str], query_of: list[int]) -> torch.Tensor:
        """Score pair p = (queries[query_of[p]], documents[p]), batched by length; keeps grad."""
        if not documents:
            return torch.empty(0, device=self.device)
        queries = [self._clip(q) for q in queries]
        documents = [self._clip(d) for d in documents]
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

    def _over_limit(self, texts: Sequence[Any], lengths: Sequence[int]) -> list[bool]:
        """Which inputs are truncated: longer than ``max_chars`` characters or ``max_length`` tokens."""
        limit, chars = self.max_length, self.max_chars
        if limit is None or chars is None:
            return [False] * len(texts)

        def clipped(item: Any) -> bool:
            parts = item if isinstance(item, tuple) else (item,)
            return any(len(part) > chars for part in parts)

        return [n > limit or clipped(t) for t, n in zip(texts, lengths, strict=True)]

    def _report_truncated(self, truncated: Sequence[bool]) -> int:
        """Log (WARNING) how many of this call's inputs were truncated, on every call; returns the count."""
        count = sum(truncated)
        if count:
            logger.warning(
                "%d of %d inputs exceed the model's limit of %d tokens and were truncated",
                count,
                len(truncated),
                self.max_length,
            )
        return count

    def _cache_fingerprint(self) -> tuple[Any, ...]:
        """Identifies the weights and settings embeddings depend on; any optimizer step changes it."""
        # Tensor._version counts in-place writes (optimizer steps, load_state_dict's copy_), so this is
        # cheap and catches training between calls; id/dtype/device catch replaced or moved parameters.
        params = tuple((id(p), p._version, p.dtype, p.device) for p in self.model.parameters())
        return (params, self.max_length, self.backend)

    def _inference_scores(
        self, queries: list[str], documents: list[str], query_of: list[int]
    ) -> tuple[list[float], list[bool]]:
        """No-grad scores of (queries[query_of[p]], documents[p]) and whether each pair was truncated.

        Token-length buckets, the embedding cache and the fast backend; texts are clipped to ``max_chars``
        first, so that counting tokens of a huge document is cheap.
        """
        if not documents:
            return [], []
        limit = self.max_length
        queries = [self._clip(q) for q in queries]
        if self.kind == "cross-encoder":
            raw_pairs = [(queries[q], d) for q, d in zip(query_of, documents, strict=True)]
            pairs = [(q, self._clip(d)) for q, d in raw_pairs]
            lengths = self._token_lengths(pairs)
            truncated = self._over_limit(raw_pairs, lengths)
            if limit is not None:
                lengths = [min(n, limit) for n in lengths]
            scores = self._bucketed(lengths, pairs, self._cross_scores_many, self._call_cost())
            return scores.float().cpu().tolist(), truncated
        # Bi-encoder: one embedding per distinct (clipped) text, whatever query it comes with.
        chars = self.max_chars
        clipped = [chars is not None and len(d) > chars for d in documents]
        unique: dict[str, int] = {}
        doc_slot = [unique.setdefault(self._clip(d), len(unique)) for d in documents]
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
        # Token overflow per distinct text; a cached text remembers its own.
        over = [
            cache is not None and e is not None and cache.was_truncated(texts[i])
            for i, e in enumerate(cached)
        ]
        new_over = [limit is not None and n > limit for n in lengths[len(queries) :]]
        for i, flag in zip(missing, new_over, strict=True):
            over[i] = flag
        if limit is not None:
            lengths = [min(n, limit) for n in lengths]
        emb = self._bucketed(lengths, to_embed, self._embed_many, self._call_cost()).cpu()
        q_emb, new = emb[: len(queries)], emb[len(queries) :]
        if cache is not None and missing:
            cache.put_many([texts[i] for i in missing], list(new), truncated=new_over)
        d_emb = torch.empty(len(texts), q_emb.shape[1], dtype=q_emb.dtype)
        if missing:
            d_emb[torch.tensor(missing)] = new
        hits = [i for i, e in enumerate(cached) if e is not None]
        if hits:
            d_emb[torch.tensor(hits)] = torch.stack([cached[i] for i in hits]).to(d_emb.dtype)  # type: ignore[misc]
        q_index = torch.tensor(query_of)
        scores = (q_emb[q_index] * d_emb[torch.tensor(doc_slot)]).sum(-1) / self.temperature
        truncated = [over[slot] or cut for slot, cut in zip(doc_slot, clipped, strict=True)]
        return scores.tolist(), truncated

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

    def _score_with_truncation(
        self, queries: Sequence[str], documents: Sequence[Sequence[str]]
    ) -> tuple[list[list[float]], list[list[bool]]]:
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
                unique_values, unique_cut = self._inference_scores(queries, unique_docs, unique_query_of)
        finally:
            self.train(was_training)
        truncated = [unique_cut[i] for i in pair_slot]
        self._report_truncated(truncated)
        values = [unique_values[i] for i in pair_slot]
        out, cuts, offset = [], [], 0
        for n in counts:
            out.append(values[offset : offset + n])
            cuts.append(truncated[offset : offset + n])
            offset += n
        return out, cuts

    def score_batch(self, queries: Sequence[str], documents: Sequence[Sequence[str]]) -> list[list[float]]:
        """Score each query's documents (no grad, one length-bucketed pass over all pairs)."""
        return self._score_with_truncation(queries, documents)[0]

    def score(self, query: str, documents: Sequence[str]) -> list[float]:
        """Score documents against one query (higher is more relevant)."""
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        return self.score_batch([query], [documents])[0]

    def unit_score(self, score: float) -> float:
        """A raw score mapped to [0, 1], monotone and spread out: ``(cos + 1) / 2`` for a bi-encoder (cos =
        score x temperature), ``sigmoid(logit)`` for a cross-encoder (the probability of "relevant")."""
        if self.kind == "bi-encoder":
            return min(1.0, max(0.0, (score * self.temperature + 1.0) / 2.0))
        if score >= 0:  # two branches so that exp() never overflows
            return 1.0 / (1.0 + math.exp(-score))
        e = math.exp(score)
        return e / (1.0 + e)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        score_threshold: float | None = None,
        *,
        scale_score: bool = False,
    ) -> Ranking:
        """Rank documents by score (ties keep input order), then apply ``score_threshold`` and ``top_k``.

        ``scale_score=True`` returns :meth:`unit_score` values (and compares the threshold with them).
        The result also says how many inputs were truncated (``Ranking.truncated``, and per document).
        """
        top_k = check_option("top_n", top_k, label="top_k")
        score_threshold = check_option("score_threshold", score_threshold)
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        texts = _check_texts(documents)
        (scores,), (cut,) = self._score_with_truncation([query], [texts])
        if scale_score:
            scores = [self.unit_score(s) for s in scores]
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        ranked = [RankedDocument(i, texts[i], scores[i], cut[i]) for i in order]
        if score_threshold is not None:
            ranked = [r for r in ranked if r.score >= score_threshold]
        result = Ranking(ranked if top_k is None else ranked[:top_k])
        result.truncated = sum(cut)
        return result

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings (bi-encoders only), e.g. for dense candidate mining."""
        if self.kind != "bi-encoder":
            raise TypeError("encode() needs a bi-encoder; a cross-encoder scores pairs only")
        texts = [self._clip(t) for t in _check_texts(texts, "text")]
        was_training = self.training
        self.eval()
        try:
            if not texts:
                return torch.empty(0, self._embedding_dim())
            out = self._bucketed([len(t) for t in texts], texts, self._embed_many)
        finally:
            self.train(was_training)
        return out.cpu()
