"""GumbelRerank: a LangChain document compressor over the gumbel-rag reranker."""

from __future__ import annotations

import copy
import json
import math
import os
import threading
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator
from typing_extensions import override

from gumbel_rag import GumbelReranker
from gumbel_rag.embedding_cache import check_cache_bound

__all__ = ["GumbelRerank"]

# One lock for every instance: loading is rare, and a module-level lock keeps instances deep-copyable.
_LOAD_LOCK = threading.Lock()


class GumbelRerank(BaseDocumentCompressor):
    """Rerank retrieved documents with a (fine-tunable) gumbel-rag reranker.

    Setup:
        ```bash
        pip install -U langchain-gumbel
        ```

    Instantiate:
        ```python
        from langchain_gumbel import GumbelRerank

        reranker = GumbelRerank(top_n=3)  # offline default model (all-MiniLM-L6-v2)
        reranker = GumbelRerank(model="path/to/fine-tuned", top_n=5, score_threshold=0.0)
        ```

    Use:
        ```python
        docs = reranker.compress_documents(documents, query="What is the capital of France?")
        docs[0].metadata["relevance_score"]
        ```
    """

    model: str | None = None
    """Model name or path: a gumbel-rag fine-tuned directory, a sentence-transformers bi-encoder or a
    Hugging Face sequence-classification cross-encoder. ``None`` uses the offline default
    (all-MiniLM-L6-v2). Names must already be in the local Hugging Face cache; nothing is downloaded."""
    top_n: int | None = 3
    """Number of documents to return; ``None`` returns every document (after ``score_threshold``)."""
    score_threshold: float | None = None
    """Keep only documents whose score is >= this value. Scores are the model's raw units (bi-encoder:
    cosine / temperature, about -20..20 with the default; cross-encoder: the relevance logit)."""
    batch_size: int = 32
    """Pairs scored per forward pass."""
    device: str | None = None
    """Torch device such as ``"cpu"`` or ``"cuda"``; ``None`` picks one automatically."""
    kind: Literal["auto", "bi-encoder", "cross-encoder"] = "auto"
    """Model kind; ``"auto"`` detects it from the model files."""
    max_length: int | None = None
    """Token limit per input (longer inputs are truncated with a warning); ``None`` keeps the model's."""
    trust_remote_code: bool = False
    """Allow custom model code shipped with the model directory."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for the underlying transformers model (e.g. ``{"torch_dtype": "auto"}``)."""
    backend: Literal["torch", "openvino"] = "torch"
    """Inference backend: ``"torch"`` (exact) or ``"openvino"`` (opt-in, CPU only, needs ``openvino``)."""
    cache_max_entries: int | None = None
    """Bi-encoders only: cache document embeddings (LRU by text), at most this many; ``None``: no cap."""
    cache_max_bytes: int | None = None
    """Bi-encoders only: cache document embeddings, at most this many bytes; ``None``: no cap. Either bound on
    its own turns the cache on; with both ``None`` there is no cache."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # The loaded model and the settings it was loaded with, so changed settings trigger a reload.
    _reranker: GumbelReranker | None = PrivateAttr(default=None)
    _loaded_key: str | None = PrivateAttr(default=None)

    @field_validator("model", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("top_n", mode="before")
    @classmethod
    def _check_top_n(cls, value: Any) -> Any:
        # bool is an int to Python, but top_n=True is a mistake, not "keep one".
        bad = isinstance(value, bool) or (isinstance(value, int | float) and value <= 0)
        if bad:
            raise ValueError(f"top_n must be a positive integer or None (keep all documents), got {value!r}")
        return value

    @field_validator("cache_max_entries", "cache_max_bytes", mode="before")
    @classmethod
    def _check_cache_bound(cls, value: Any, info: ValidationInfo) -> Any:
        return check_cache_bound(value, info.field_name)

    @field_validator("score_threshold")
    @classmethod
    def _check_threshold(cls, value: float | None) -> float | None:
        if value is not None and math.isnan(value):
            raise ValueError("score_threshold must be a number or None, got NaN")
        return value

    @field_validator("batch_size")
    @classmethod
    def _check_batch_size(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"batch_size must be >= 1, got {value}")
        return value

    def _load_key(self) -> str:
        settings = [self.model, self.device, self.kind, self.max_length, self.trust_remote_code, self.backend]
        settings += [self.cache_max_entries, self.cache_max_bytes]
        return json.dumps([*settings, self.model_kwargs], sort_keys=True, default=repr)

    @property
    def reranker(self) -> GumbelReranker:
        """The underlying ``GumbelReranker``, loaded on first use and reused afterwards."""
        key = self._load_key()
        reranker = self._reranker
        if reranker is not None and self._loaded_key == key:
            # Loaded already: no lock, so one instance loading a model never stalls the others.
            reranker.batch_size = self.batch_size
            return reranker
        with _LOAD_LOCK:
            if self._reranker is None or self._loaded_key != key:
                self._reranker = GumbelReranker.from_pretrained(
                    self.model,
                    kind=self.kind,
                    device=self.device,
                    max_length=self.max_length,
                    batch_size=self.batch_size,
                    trust_remote_code=self.trust_remote_code,
                    model_kwargs=self.model_kwargs or None,
                    backend=self.backend,
                    cache_max_entries=self.cache_max_entries,
                    cache_max_bytes=self.cache_max_bytes,
                )
                self._loaded_key = key
            # batch_size only shapes batching, so it is applied without a reload.
            self._reranker.batch_size = self.batch_size
            return self._reranker

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> GumbelRerank:
        """An independent copy; a loaded model that cannot be deep-copied is loaded again by the copy."""
        clone = self.model_copy()
        object.__setattr__(clone, "__dict__", copy.deepcopy(self.__dict__, memo))
        reranker, key = self._reranker, self._loaded_key
        try:
            clone._reranker, clone._loaded_key = copy.deepcopy(reranker, memo), key
        except TypeError:
            # An OpenVINO compiled model or an embedding cache (it holds a lock) cannot be copied: the
            # copy loads its own model, with its own empty cache, on first use.
            clone._reranker, clone._loaded_key = None, None
        return clone

    def _rerank(self, documents: Sequence[Document], query: str) -> list[Document]:
        docs = list(documents)
        if not docs:
            return []
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        texts = [_text_of(doc, i) for i, doc in enumerate(docs)]
        ranked = self.reranker.rerank(query, texts, top_k=self.top_n, score_threshold=self.score_threshold)
        return [_with_score(docs[r.index], r.score) for r in ranked]

    @override
    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Return copies of the best documents, best first, with ``metadata["relevance_score"]`` set."""
        return self._rerank(documents, query)

    @override
    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async ``compress_documents``: loading and scoring run in a worker thread, off the event loop."""
        if not documents:
            return []
        # run_in_executor copies the context, so tracing/callback context follows the work.
        return await run_in_executor(None, self._rerank, documents, query)


def _text_of(doc: Document, index: int) -> str:
    content = getattr(doc, "page_content", None)
    if content is None:
        return ""
    if not isinstance(content, str):
        raise TypeError(f"document at index {index} has {type(content).__name__} page_content, expected str")
    return content


def _with_score(doc: Document, score: float) -> Document:
    """A copy of ``doc`` (same class, id and metadata) with the score added; the input is untouched."""
    try:
        metadata = copy.deepcopy(doc.metadata or {})
    except Exception:
        # Uncopyable values (locks, clients) are shared; the dict itself is still a new one.
        metadata = dict(doc.metadata or {})
    metadata["relevance_score"] = float(score)
    return doc.model_copy(update={"metadata": metadata})
