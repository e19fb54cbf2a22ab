"""A bounded, thread-safe LRU cache of document embeddings keyed by text.

RAG traffic repeats documents: the same passages come back from the retriever for many queries. A
bi-encoder embeds each document independently of the query, so a document seen before needs no
forward pass at all. The cache is bounded by entry count and/or by bytes, whichever the user sets.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import torch

__all__ = ["EmbeddingCache", "check_cache_bound", "entry_bytes"]


def check_cache_bound(value: object, name: str) -> int | None:
    """Return ``value`` if it is None or a positive int; otherwise raise ValueError naming ``name``."""
    # bool is an int subclass, but a bound of True is a mistake, not "one entry"; 3.0 or "100" would
    # be coerced silently by some config layers, so every caller gets the same strict rule.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None (no bound), got {value!r}")
    return value


def entry_bytes(text: str, embedding: torch.Tensor) -> int:
    """Bytes one entry is charged: the embedding's storage plus the key string object."""
    # sys.getsizeof counts the str header and its (1, 2 or 4 byte) code units, i.e. what the key costs.
    return embedding.numel() * embedding.element_size() + sys.getsizeof(text)


class EmbeddingCache:
    """LRU map text -> embedding (CPU float tensors) with an entry bound and/or a byte bound.

    ``max_entries`` caps the number of documents, ``max_bytes`` caps :attr:`nbytes` (embedding storage
    plus key strings, see :func:`entry_bytes`; the dict's own bookkeeping, about 100 bytes an entry,
    is not counted). Least recently used entries are evicted first; a hit counts as a use. An entry
    larger than ``max_bytes`` on its own is not stored. ``fingerprint`` identifies the model state the
    embeddings came from: a different fingerprint empties the cache, so stale embeddings are never
    served after the weights change.
    """

    def __init__(self, max_entries: int | None = None, max_bytes: int | None = None) -> None:
        """Create an empty cache; at least one bound must be set, and bounds must be positive."""
        if max_entries is None and max_bytes is None:
            raise ValueError("set max_entries and/or max_bytes: an unbounded cache would grow forever")
        self.max_entries = check_cache_bound(max_entries, "max_entries")
        self.max_bytes = check_cache_bound(max_bytes, "max_bytes")
        self._data: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._sizes: dict[str, int] = {}
        # Texts whose embedding came from a truncated input, so a cache hit still counts as truncated.
        self._truncated: set[str] = set()
        self._nbytes = 0
        self._fingerprint: Hashable = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """Number of cached documents."""
        return len(self._data)

    def __contains__(self, text: object) -> bool:
        """Whether ``text`` is cached (does not count as a use)."""
        return text in self._data

    @property
    def nbytes(self) -> int:
        """Bytes charged for the entries now held (never above ``max_bytes``)."""
        return self._nbytes

    def texts(self) -> list[str]:
        """Cached texts, least recently used first (the eviction order)."""
        with self._lock:
            return list(self._data)

    def clear(self) -> None:
        """Drop every entry (the hit and miss counters are kept)."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._data.clear()
        self._sizes.clear()
        self._truncated.clear()
        self._nbytes = 0

    def was_truncated(self, text: str) -> bool:
        """Whether the cached embedding of ``text`` was computed from a truncated input."""
        return text in self._truncated

    def check_fingerprint(self, fingerprint: Hashable) -> None:
        """Empty the cache if the embeddings were made by a different model state."""
        with self._lock:
            if fingerprint != self._fingerprint:
                self._clear()
                self._fingerprint = fingerprint

    def get_many(self, texts: Sequence[str]) -> list[torch.Tensor | None]:
        """The cached embedding of each text, or None; hits become most recently used."""
        out: list[torch.Tensor | None] = []
        with self._lock:
            for text in texts:
                emb = self._data.get(text)
                if emb is None:
                    self.misses += 1
                else:
                    self._data.move_to_end(text)
                    self.hits += 1
                out.append(emb)
        return out

    def get(self, text: str) -> torch.Tensor | None:
        """The cached embedding of one text, or None."""
        return self.get_many([text])[0]

    def put_many(
        self,
        texts: Sequence[str],
        embeddings: Sequence[torch.Tensor],
        truncated: Sequence[bool] | None = None,
    ) -> None:
        """Store embeddings (copied to compact CPU tensors), evicting least recently used entries.

        ``truncated`` marks the texts whose input was cut to the model's limit (see :meth:`was_truncated`).
        """
        if len(texts) != len(embeddings):
            raise ValueError(f"got {len(texts)} texts but {len(embeddings)} embeddings")
        flags = [False] * len(texts) if truncated is None else list(truncated)
        if len(flags) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(flags)} truncation flags")
        # clone(): a row of a batch output is a view that would keep the whole batch's storage alive.
        rows = [e.detach().to("cpu", copy=True).contiguous() for e in embeddings]
        with self._lock:
            for text, emb, cut in zip(texts, rows, flags, strict=True):
                size = entry_bytes(text, emb)
                if self.max_bytes is not None and size > self.max_bytes:
                    continue
                if text in self._data:
                    self._nbytes -= self._sizes.pop(text)
                    del self._data[text]
                self._data[text] = emb
                self._sizes[text] = size
                self._truncated.discard(text)
                if cut:
                    self._truncated.add(text)
                self._nbytes += size
                self._evict()

    def put(self, text: str, embedding: torch.Tensor) -> None:
        """Store one embedding."""
        self.put_many([text], [embedding])

    def _evict(self) -> None:
        while self._data and (
            (self.max_entries is not None and len(self._data) > self.max_entries)
            or (self.max_bytes is not None and self._nbytes > self.max_bytes)
        ):
            text, _ = self._data.popitem(last=False)
            self._nbytes -= self._sizes.pop(text)
            self._truncated.discard(text)

    def __repr__(self) -> str:
        """Bounds, fill and hit counts, for logs."""
        return (
            f"EmbeddingCache(entries={len(self)}/{self.max_entries}, bytes={self.nbytes}/{self.max_bytes}, "
            f"hits={self.hits}, misses={self.misses})"
        )
