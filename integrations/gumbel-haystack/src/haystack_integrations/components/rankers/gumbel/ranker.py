"""GumbelRanker: a Haystack ranker component backed by gumbel-rag's GumbelReranker."""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from haystack import Document, component, default_from_dict, default_to_dict, logging
from haystack.core.errors import DeserializationError
from haystack.utils import ComponentDevice
from haystack.utils.hf import deserialize_hf_model_kwargs, serialize_hf_model_kwargs
from haystack.utils.misc import _deduplicate_documents

from gumbel_rag import GumbelReranker
from gumbel_rag.embedding_cache import check_cache_bound

__all__ = ["GumbelRanker", "document_text"]

logger = logging.getLogger(__name__)

ModelKindOption = Literal["auto", "bi-encoder", "cross-encoder"]
_KINDS = ("auto", "bi-encoder", "cross-encoder")
BackendOption = Literal["torch", "openvino"]
_BACKENDS = ("torch", "openvino")


def _check_top_k(top_k: Any, where: str) -> None:
    # bool is an int subclass; top_k=True would silently mean 1.
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"{where}: top_k must be a positive integer, got {top_k!r}")
    if top_k <= 0:
        raise ValueError(f"{where}: top_k must be > 0, but got {top_k}")


def _sigmoid(x: float) -> float:
    # Two branches so neither exp() overflows for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def document_text(
    document: Document,
    *,
    meta_fields_to_embed: list[str] | None = None,
    embedding_separator: str = "\n",
    document_prefix: str = "",
    document_suffix: str = "",
) -> str:
    """The text the ranker scores for a document (missing or empty content counts as empty text)."""
    meta_values = [
        str(document.meta[key])
        for key in meta_fields_to_embed or []
        if key in document.meta and document.meta[key] is not None
    ]
    return (
        document_prefix + embedding_separator.join([*meta_values, document.content or ""]) + document_suffix
    )


@component
class GumbelRanker:
    """
    Ranks documents by their relevance to the query with a gumbel-rag reranker.

    The reranker is either a bi-encoder (score = cosine similarity / temperature) or a cross-encoder
    (score = relevance logit). With `model=None` it loads the offline default (all-MiniLM-L6-v2, shipped
    as a Python package, no download); pass the directory written by `gumbel-rag train` to use a
    reranker fine-tuned end to end on your own QA logs.

    ### Usage example

    ```python
    from haystack import Document
    from haystack_integrations.components.rankers.gumbel import GumbelRanker

    ranker = GumbelRanker(top_k=2)
    docs = [Document(content="Paris"), Document(content="Berlin")]
    result = ranker.run(query="City in Germany", documents=docs)
    print(result["documents"][0].content)
    ```
    """

    def __init__(
        self,
        *,
        model: str | Path | None = None,
        device: ComponentDevice | None = None,
        top_k: int = 10,
        query_prefix: str = "",
        query_suffix: str = "",
        document_prefix: str = "",
        document_suffix: str = "",
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        scale_score: bool = True,
        score_threshold: float | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        kind: ModelKindOption = "auto",
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        backend: BackendOption = "torch",
        cache_max_entries: int | None = None,
        cache_max_bytes: int | None = None,
    ) -> None:
        """
        Create a GumbelRanker; the model is loaded lazily by `warm_up()` (or the first `run()`).

        :param model:
            A local model directory: one written by `gumbel-rag train` / `GumbelReranker.save_pretrained`,
            any sentence-transformers directory, or a Hugging Face sequence-classification directory. A hub
            name works only if it is already in the local Hugging Face cache (nothing is downloaded).
            `None` loads the offline default, all-MiniLM-L6-v2 (a bi-encoder).
        :param device:
            The device to load the model on. If `None`, the best available device is selected.
            Device maps (several devices) are not supported.
        :param top_k:
            The maximum number of documents to return.
        :param query_prefix:
            A string added before the query, e.g. an instruction some models expect.
        :param query_suffix:
            A string added after the query.
        :param document_prefix:
            A string added before each document's text.
        :param document_suffix:
            A string added after each document's text.
        :param meta_fields_to_embed:
            Metadata fields whose values are scored together with the content, joined by `embedding_separator`
            (metadata first, then content).
        :param embedding_separator:
            Separator between the embedded metadata values and the content.
        :param scale_score:
            If `True`, the returned score is `sigmoid(raw score)`, in (0, 1), as in Haystack's
            `SentenceTransformersSimilarityRanker`. For a bi-encoder the raw score is cosine / temperature
            (temperature 0.05 by default, so the raw score lies in [-20, 20] and the sigmoid saturates
            close to 0 and 1); ranking uses the raw score either way. If `False`, the raw score is returned.
        :param score_threshold:
            Keep only documents with `score >= score_threshold`, compared with the returned score (scaled
            or raw, following `scale_score`).
        :param batch_size:
            How many texts (bi-encoder) or pairs (cross-encoder) go through the model at once.
        :param max_length:
            Token limit per input; longer inputs are truncated (with a warning). `None` keeps the
            model's limit.
        :param kind:
            "auto" (detect from the model files), "bi-encoder" or "cross-encoder".
        :param trust_remote_code:
            If `True`, allow model repositories with custom code. Only enable for models you trust.
        :param model_kwargs:
            Extra keyword arguments for loading the underlying Hugging Face model, e.g.
            `{"torch_dtype": "auto"}`.
        :param backend:
            "torch" (the exact path, any device) or "openvino": an opt-in, inference-only CPU path that
            compiles the model with OpenVINO at `warm_up()` (a few seconds; needs the `openvino` package,
            `pip install 'gumbel-rag[fast]'`). Its scores equal the exact path's within about 1e-5 and it
            is faster on CPUs (see gumbel-rag's docs/performance.md). With "openvino", `device=None`
            means the CPU, and any other device is rejected.
        :param cache_max_entries:
            Bi-encoders only: keep the embeddings of up to this many distinct document texts in an LRU
            cache, so documents seen in earlier runs (the same text after `meta_fields_to_embed` and the
            prefix/suffix) need no forward pass. `None` (with `cache_max_bytes=None`): no cache.
        :param cache_max_bytes:
            Bi-encoders only: bound the cache by the bytes it holds (embeddings plus their text keys)
            instead of, or together with, `cache_max_entries`. `None`: no byte bound.

        :raises ValueError:
            If `top_k` or `batch_size` is not > 0, `kind` or `backend` is unknown, `device` is a device map,
            `backend="openvino"` is given a non-CPU device, `cache_max_entries` or `cache_max_bytes` is not
            a positive integer (or `None`), or a cache bound is set with `kind="cross-encoder"`. With
            `kind="auto"` a cache bound on a model that turns out to be a cross-encoder raises a
            `ValueError` from `warm_up()` (the kind is known only once the model is loaded).
        :raises TypeError: If `top_k` is not an integer.
        """
        _check_top_k(top_k, "GumbelRanker")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"GumbelRanker: batch_size must be a positive integer, got {batch_size!r}")
        if kind not in _KINDS:
            raise ValueError(f"GumbelRanker: kind must be one of {_KINDS}, got {kind!r}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"GumbelRanker: max_length must be > 0 or None, got {max_length}")
        if backend not in _BACKENDS:
            raise ValueError(f"GumbelRanker: backend must be one of {_BACKENDS}, got {backend!r}")
        check_cache_bound(cache_max_entries, "GumbelRanker: cache_max_entries")
        check_cache_bound(cache_max_bytes, "GumbelRanker: cache_max_bytes")
        if kind == "cross-encoder" and (cache_max_entries is not None or cache_max_bytes is not None):
            raise ValueError(
                "GumbelRanker: cache_max_entries / cache_max_bytes need a bi-encoder: the embedding cache "
                "stores per-document embeddings, and a cross-encoder scores each (query, document) pair "
                "jointly"
            )
        if backend == "openvino" and device is None:
            # OpenVINO runs on the CPU; "best available" would pick a GPU where there is one.
            device = ComponentDevice.from_str("cpu")
        resolved = ComponentDevice.resolve_device(device)
        if resolved.has_multiple_devices:
            raise ValueError("GumbelRanker: device maps are not supported; pass a single device")
        if backend == "openvino" and resolved.to_torch_str() != "cpu":
            raise ValueError(
                f"GumbelRanker: backend='openvino' runs on the CPU, got device {resolved.to_torch_str()!r}; "
                "pass device=None or ComponentDevice.from_str('cpu'), or use backend='torch'"
            )

        self.model = str(model) if model is not None else None
        self.device = resolved
        self.top_k = top_k
        self.query_prefix = query_prefix
        self.query_suffix = query_suffix
        self.document_prefix = document_prefix
        self.document_suffix = document_suffix
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.scale_score = scale_score
        self.score_threshold = score_threshold
        self.batch_size = batch_size
        self.max_length = max_length
        self.kind = kind
        self.trust_remote_code = trust_remote_code
        self.model_kwargs = model_kwargs
        self.backend = backend
        self.cache_max_entries = cache_max_entries
        self.cache_max_bytes = cache_max_bytes
        self._reranker: GumbelReranker | None = None
        # run_async calls run in worker threads; two concurrent first calls must not load the model twice.
        self._load_lock = threading.Lock()

    @property
    def reranker(self) -> GumbelReranker | None:
        """The loaded gumbel-rag reranker, or `None` before `warm_up()`."""
        return self._reranker

    def warm_up(self) -> None:
        """
        Load the model once; later calls do nothing.

        :raises ValueError:
            If `cache_max_entries` / `cache_max_bytes` is set and the model is a cross-encoder (the core
            reranker's "an embedding cache needs a bi-encoder" error).
        """
        if self._reranker is not None:
            return
        with self._load_lock:
            if self._reranker is None:
                self._reranker = GumbelReranker.from_pretrained(
                    self.model,
                    kind=self.kind,
                    device=self.device.to_torch_str(),
                    max_length=self.max_length,
                    batch_size=self.batch_size,
                    trust_remote_code=self.trust_remote_code,
                    model_kwargs=copy.deepcopy(self.model_kwargs),
                    backend=self.backend,
                    cache_max_entries=self.cache_max_entries,
                    cache_max_bytes=self.cache_max_bytes,
                )

    async def warm_up_async(self) -> None:
        """Load the model in a worker thread, so `Pipeline.run_async` does not block its event loop on it."""
        if self._reranker is None:
            await asyncio.to_thread(self.warm_up)

    def to_dict(self) -> dict[str, Any]:
        """
        Serialize this component to a dictionary.

        :returns: Dictionary with serialized data.
        """
        # Serialize a copy: serialize_hf_model_kwargs works in place and would turn our dtypes into strings.
        model_kwargs = copy.deepcopy(self.model_kwargs)
        if model_kwargs is not None:
            serialize_hf_model_kwargs(model_kwargs)
        return default_to_dict(
            self,
            model=self.model,
            device=self.device.to_dict(),
            top_k=self.top_k,
            query_prefix=self.query_prefix,
            query_suffix=self.query_suffix,
            document_prefix=self.document_prefix,
            document_suffix=self.document_suffix,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
            scale_score=self.scale_score,
            score_threshold=self.score_threshold,
            batch_size=self.batch_size,
            max_length=self.max_length,
            kind=self.kind,
            trust_remote_code=self.trust_remote_code,
            model_kwargs=model_kwargs,
            backend=self.backend,
            cache_max_entries=self.cache_max_entries,
            cache_max_bytes=self.cache_max_bytes,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GumbelRanker:
        """
        Deserialize the component from a dictionary.

        :param data: Dictionary to deserialize from.
        :returns: Deserialized component.
        :raises DeserializationError: If the data names init parameters that GumbelRanker does not have.
        """
        params = dict(data.get("init_parameters") or {})
        valid = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise DeserializationError(
                f"GumbelRanker got unknown init parameter(s) {', '.join(map(repr, unknown))}. "
                f"Valid parameters are: {', '.join(valid)}."
            )
        if params.get("model_kwargs") is not None:
            params["model_kwargs"] = copy.deepcopy(params["model_kwargs"])
            deserialize_hf_model_kwargs(params["model_kwargs"])
        return default_from_dict(cls, {**data, "init_parameters": params})

    def _prepare_text(self, document: Document) -> str:
        return document_text(
            document,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
            document_prefix=self.document_prefix,
            document_suffix=self.document_suffix,
        )

    @component.output_types(documents=list[Document])
    def run(
        self,
        *,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """
        Rank documents by relevance to the query, most relevant first.

        Documents are first deduplicated by id (keeping the copy with the highest score, as Haystack's
        rankers do). Ties keep the input order. Each returned document is a copy of the input with its
        `score` set; the input documents are not modified.

        :param query: The query to rank the documents against.
        :param documents: The documents to rank.
        :param top_k: The maximum number of documents to return; overrides the init value.
        :param scale_score: Return `sigmoid(raw score)` instead of the raw score; overrides the init value.
        :param score_threshold: Keep only documents with `score >= score_threshold`; overrides the init value.
        :returns: A dictionary with `documents`: the ranked documents.
        :raises ValueError: If `top_k` is not > 0.
        :raises TypeError: If `query` is not a string or an item of `documents` is not a `Document`.
        """
        if top_k is not None:
            _check_top_k(top_k, "GumbelRanker.run")
        if not isinstance(query, str):
            raise TypeError(f"GumbelRanker.run: query must be a string, got {type(query).__name__}")
        for i, doc in enumerate(documents):
            if not isinstance(doc, Document):
                raise TypeError(
                    f"GumbelRanker.run: documents[{i}] is {type(doc).__name__}, expected haystack Document"
                )
        if not documents:
            return {"documents": []}

        top_k = self.top_k if top_k is None else top_k
        scale_score = self.scale_score if scale_score is None else scale_score
        score_threshold = self.score_threshold if score_threshold is None else score_threshold

        self.warm_up()
        assert self._reranker is not None  # set by warm_up
        unique = _deduplicate_documents(documents)
        ranked = self._reranker.rerank(
            self.query_prefix + query + self.query_suffix, [self._prepare_text(doc) for doc in unique]
        )

        out: list[Document] = []
        for item in ranked:
            score = _sigmoid(item.score) if scale_score else float(item.score)
            if score_threshold is not None and score < score_threshold:
                continue
            source = unique[item.index]
            # A fresh meta dict so a downstream component editing it cannot reach the caller's document.
            out.append(replace(source, score=score, meta=dict(source.meta)))
            if len(out) == top_k:
                break
        return {"documents": out}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        *,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """
        Asynchronously rank documents; the model runs in a worker thread, so the event loop stays free.

        Same parameters, return value and errors as `run`.
        """
        return await asyncio.to_thread(
            self.run,
            query=query,
            documents=documents,
            top_k=top_k,
            scale_score=scale_score,
            score_threshold=score_threshold,
        )
