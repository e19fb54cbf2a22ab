"""GumbelRanker: a Haystack ranker component backed by gumbel-rag's GumbelReranker."""

from __future__ import annotations

import asyncio
import copy
import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict, logging
from haystack.core.errors import DeserializationError
from haystack.utils import ComponentDevice, Secret
from haystack.utils.hf import deserialize_hf_model_kwargs, serialize_hf_model_kwargs
from haystack.utils.misc import _deduplicate_documents

from gumbel_rag import GumbelReranker
from gumbel_rag.errors import ConfigError
from gumbel_rag.modelfiles import KindOption
from gumbel_rag.serving import LazyReranker, rank_texts
from gumbel_rag.serving_options import TRUNCATED_KEY, Backend, ServingOptions, check_option

__all__ = ["GumbelRanker", "document_text"]

logger = logging.getLogger(__name__)

# Haystack's name for a core option, where it differs.
_SPELLING = {"top_n": "top_k"}
# Attributes checked by the core's rule when set (construction and assignment alike); the device and
# the token are Haystack objects, checked where they are used.
_CHECKED = {
    "model": "model",
    "top_k": "top_n",
    "scale_score": "scale_score",
    "score_threshold": "score_threshold",
    "batch_size": "batch_size",
    "max_length": "max_length",
    "kind": "kind",
    "trust_remote_code": "trust_remote_code",
    "model_kwargs": "model_kwargs",
    "tokenizer_kwargs": "tokenizer_kwargs",
    "config_kwargs": "config_kwargs",
    "backend": "backend",
    "cache_max_entries": "cache_max_entries",
    "cache_max_bytes": "cache_max_bytes",
    "local_files_only": "local_files_only",
    "revision": "revision",
    "cache_folder": "cache_folder",
}
_TEXT_OPTIONS = ("query_prefix", "query_suffix", "document_prefix", "document_suffix", "embedding_separator")


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
    (score = relevance logit). With `model=None` it loads the packaged default (all-MiniLM-L6-v2, shipped
    as a Python package, no download); pass the directory written by `gumbel-rag train` to use a
    reranker fine-tuned end to end on your own QA logs, or a Hugging Face Hub name. It takes every init
    parameter of Haystack's `SentenceTransformersSimilarityRanker`, so a saved pipeline switches to it by
    changing the component's `type:`.

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
        token: Secret | None = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False),  # noqa: B008
        top_k: int = 10,
        query_prefix: str = "",
        query_suffix: str = "",
        document_prefix: str = "",
        document_suffix: str = "",
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        scale_score: bool = True,
        score_threshold: float | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        backend: Backend = "torch",
        batch_size: int = 16,
        max_length: int | None = None,
        kind: KindOption = "auto",
        cache_max_entries: int | None = None,
        cache_max_bytes: int | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        cache_folder: str | None = None,
    ) -> None:
        """
        Create a GumbelRanker; the model is loaded lazily by `warm_up()` (or the first `run()`).

        :param model:
            A local model directory (one written by `gumbel-rag train` / `GumbelReranker.save_pretrained`,
            any sentence-transformers directory, or a Hugging Face sequence-classification directory) or a
            Hugging Face Hub name, downloaded into the Hugging Face cache on first use unless
            `local_files_only=True` or `HF_HUB_OFFLINE=1`. `None` loads the packaged default,
            all-MiniLM-L6-v2 (a bi-encoder), with no network.
        :param device:
            The device to load the model on. If `None`, the best available device is selected.
            Device maps (several devices) are not supported.
        :param token:
            The Hugging Face token for private or gated hub models (by default `HF_API_TOKEN` / `HF_TOKEN`).
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
            If `True`, the returned score is in [0, 1] and keeps the order and spread of the raw score:
            `(cosine + 1) / 2` for a bi-encoder, `sigmoid(logit)` for a cross-encoder (as Haystack's
            `SentenceTransformersSimilarityRanker`). If `False`, the raw score (cosine / temperature, or the
            logit).
        :param score_threshold:
            Keep only documents with `score >= score_threshold`, compared with the returned score (scaled
            or raw, following `scale_score`).
        :param trust_remote_code:
            If `True`, allow model repositories with custom code. Only enable for models you trust; it cannot
            be switched on through `model_kwargs`, `tokenizer_kwargs` or `config_kwargs`.
        :param model_kwargs:
            Extra keyword arguments for loading the underlying Hugging Face model, e.g.
            `{"torch_dtype": "auto"}`.
        :param tokenizer_kwargs:
            Extra keyword arguments for the tokenizer.
        :param config_kwargs:
            Extra keyword arguments for the model configuration.
        :param backend:
            "torch" (the exact path, any device) or "openvino": an opt-in, inference-only CPU path that
            compiles the model with OpenVINO at `warm_up()` (a few seconds; needs the `openvino` package,
            `pip install 'gumbel-rag[fast]'`). Its scores equal the exact path's within about 1e-5. With
            "openvino", `device=None` means the CPU, and any other device is rejected. The stock ranker's
            "onnx" is refused with the reason.
        :param batch_size:
            How many texts (bi-encoder) or pairs (cross-encoder) go through the model at once.
        :param max_length:
            Token limit per input; longer inputs are truncated (logged, and marked `meta["truncated"]`).
            `None` keeps the model's limit.
        :param kind:
            "auto" (detect from the model files), "bi-encoder" or "cross-encoder".
        :param cache_max_entries:
            Bi-encoders only: keep the embeddings of up to this many distinct document texts in an LRU
            cache, so documents seen in earlier runs (the same text after `meta_fields_to_embed` and the
            prefix/suffix) need no forward pass. `None` (with `cache_max_bytes=None`): no cache.
        :param cache_max_bytes:
            Bi-encoders only: bound the cache by the bytes it holds (embeddings plus their text keys)
            instead of, or together with, `cache_max_entries`. `None`: no byte bound.
        :param local_files_only:
            Never download: use local directories and the Hugging Face cache only.
        :param revision:
            Hub models: the branch, tag or commit to load.
        :param cache_folder:
            The Hugging Face cache directory (`None`: the standard one).

        :raises ValueError:
            A `gumbel_rag.errors.ConfigError` naming the parameter: `top_k` or `batch_size` not a positive
            integer, a non-finite `score_threshold`, an unknown `kind` or `backend`, a device map, an
            `"openvino"` backend on a non-CPU device, a bad cache bound, a cache bound with
            `kind="cross-encoder"`, or `trust_remote_code` set inside `model_kwargs` / `tokenizer_kwargs` /
            `config_kwargs` against `trust_remote_code`. With `kind="auto"` a cache bound on a model that
            turns out to be a cross-encoder raises from `warm_up()` (the kind is known once it is loaded).
        """
        self._lazy = LazyReranker()
        if backend == "openvino" and device is None:
            # OpenVINO runs on the CPU; "best available" would pick a GPU where there is one.
            device = ComponentDevice.from_str("cpu")
        resolved = ComponentDevice.resolve_device(device)
        if resolved.has_multiple_devices:
            raise ConfigError("device maps are not supported by GumbelRanker; pass a single device")
        if token is not None and not isinstance(token, Secret):
            raise ConfigError(f"token must be a haystack Secret or None, got {type(token).__name__}")
        self.model = str(model) if isinstance(model, Path) else model
        self.device = resolved
        self.token = token
        self.top_k = top_k
        self.query_prefix = query_prefix
        self.query_suffix = query_suffix
        self.document_prefix = document_prefix
        self.document_suffix = document_suffix
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.scale_score = scale_score
        self.score_threshold = score_threshold
        self.trust_remote_code = trust_remote_code
        self.model_kwargs = model_kwargs
        self.tokenizer_kwargs = tokenizer_kwargs
        self.config_kwargs = config_kwargs
        self.backend = backend
        self.batch_size = batch_size
        self.max_length = max_length
        self.kind = kind
        self.cache_max_entries = cache_max_entries
        self.cache_max_bytes = cache_max_bytes
        self.local_files_only = local_files_only
        self.revision = revision
        self.cache_folder = cache_folder
        for name in _TEXT_OPTIONS:
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        self._options()  # the combinations (remote code, a cache on a cross-encoder, openvino on a GPU)

    def __setattr__(self, name: str, value: Any) -> None:
        """Set an attribute; a serving option is checked by the core's rule first (`top_k = 0` fails)."""
        core = _CHECKED.get(name)
        if core is not None:
            value = check_option(core, value, label=name)
        # object.__setattr__, not super(): @component rebuilds the class, which breaks the super() cell.
        object.__setattr__(self, name, value)

    def _options(self, **overrides: Any) -> ServingOptions:
        token = self.token.resolve_value() if self.token is not None else None
        values = {core: getattr(self, name) for name, core in _CHECKED.items()}
        values.update(overrides)
        return ServingOptions(**values, device=self.device.to_torch_str(), token=token, spelling=_SPELLING)

    @property
    def reranker(self) -> GumbelReranker | None:
        """The loaded gumbel-rag reranker, or `None` before `warm_up()`."""
        return self._lazy.loaded

    def warm_up(self) -> None:
        """
        Load the model; later calls do nothing unless a load option (model, device, ...) changed.

        :raises gumbel_rag.errors.ModelLoadError: The model cannot be had (one line: the model and what
            was tried: a missing directory, the offline flag, not found on the hub, gated, no network).
        :raises ValueError:
            If `cache_max_entries` / `cache_max_bytes` is set and the model is a cross-encoder (the core
            reranker's "an embedding cache needs a bi-encoder" error).
        """
        self._lazy.get(self._options())

    async def warm_up_async(self) -> None:
        """Load the model in a worker thread, so `Pipeline.run_async` does not block its event loop on it."""
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
        params = {name: getattr(self, name) for name in _init_parameters() if name != "model_kwargs"}
        return default_to_dict(self, **params, model_kwargs=model_kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GumbelRanker:
        """
        Deserialize the component from a dictionary.

        :param data: Dictionary to deserialize from.
        :returns: Deserialized component.
        :raises DeserializationError: If the data names init parameters that GumbelRanker does not have.
        """
        params = dict(data.get("init_parameters") or {})
        valid = _init_parameters()
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
        `score` set (and `meta["truncated"] = True` where its text was cut to `max_length` tokens); the
        input documents are not modified.

        :param query: The query to rank the documents against.
        :param documents: The documents to rank.
        :param top_k: The maximum number of documents to return; overrides the init value.
        :param scale_score: Return the [0, 1] score instead of the raw one; overrides the init value.
        :param score_threshold: Keep only documents with `score >= score_threshold`; overrides the init value.
        :returns: A dictionary with `documents`: the ranked documents.
        :raises ValueError: If `top_k` is not a positive integer or `score_threshold` is not finite.
        :raises TypeError: If `query` is not a string or an item of `documents` is not a `Document`.
        """
        overrides = {"top_n": top_k, "scale_score": scale_score, "score_threshold": score_threshold}
        options = self._options(**{k: v for k, v in overrides.items() if v is not None})
        if not isinstance(query, str):
            raise TypeError(f"GumbelRanker.run: query must be a string, got {type(query).__name__}")
        for i, doc in enumerate(documents):
            if not isinstance(doc, Document):
                raise TypeError(
                    f"GumbelRanker.run: documents[{i}] is {type(doc).__name__}, expected haystack Document"
                )
        if not documents:
            return {"documents": []}
        unique = _deduplicate_documents(documents)
        texts = [self._prepare_text(doc) for doc in unique]
        ranking = rank_texts(self._lazy, options, self.query_prefix + query + self.query_suffix, texts)
        out = []
        for item in ranking:
            source = unique[item.index]
            # A fresh meta dict so a downstream component editing it cannot reach the caller's document.
            meta = {**source.meta, TRUNCATED_KEY: True} if item.truncated else dict(source.meta)
            out.append(replace(source, score=float(item.score), meta=meta))
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


def _init_parameters() -> list[str]:
    return [name for name in inspect.signature(GumbelRanker.__init__).parameters if name != "self"]
