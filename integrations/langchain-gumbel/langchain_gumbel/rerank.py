"""GumbelRerank: a LangChain document compressor over the gumbel-rag reranker."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Self

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import run_in_executor
from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import override

from gumbel_rag import GumbelReranker
from gumbel_rag.modelfiles import KindOption
from gumbel_rag.serving import LazyReranker, rank_texts
from gumbel_rag.serving_options import OPTION_NAMES, TRUNCATED_KEY, Backend, ServingOptions, check_option

__all__ = ["GumbelRerank"]

# Options checked by the core's rule for each (the token is a SecretStr, which pydantic checks).
_CHECKED = tuple(name for name in OPTION_NAMES if name != "token")


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
    Hugging Face sequence-classification cross-encoder, local or on the Hugging Face Hub (downloaded into
    the Hugging Face cache on first use). ``None`` uses the packaged default (all-MiniLM-L6-v2)."""
    top_n: int | None = 3
    """Number of documents to return; ``None`` returns every document (after ``score_threshold``)."""
    score_threshold: float | None = None
    """Keep only documents whose returned score is >= this value (raw units unless ``scale_score``)."""
    scale_score: bool = False
    """Return scores in [0, 1]: (cosine + 1) / 2 for a bi-encoder, sigmoid(logit) for a cross-encoder."""
    batch_size: int = 32
    """Pairs scored per forward pass."""
    device: str | None = None
    """Torch device such as ``"cpu"`` or ``"cuda"``; ``None`` picks one automatically."""
    kind: KindOption = "auto"
    """Model kind; ``"auto"`` detects it from the model files."""
    max_length: int | None = None
    """Token limit per input (longer inputs are truncated and marked); ``None`` keeps the model's."""
    trust_remote_code: bool = False
    """Allow custom model code shipped with the model (only for models you trust)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for the underlying transformers model (e.g. ``{"torch_dtype": "auto"}``)."""
    tokenizer_kwargs: dict[str, Any] | None = None
    """Extra keyword arguments for the tokenizer."""
    config_kwargs: dict[str, Any] | None = None
    """Extra keyword arguments for the model configuration."""
    backend: Backend = "torch"
    """Inference backend: ``"torch"`` (exact) or ``"openvino"`` (opt-in, CPU only, needs ``openvino``)."""
    cache_max_entries: int | None = None
    """Bi-encoders only: cache document embeddings (LRU by text), at most this many; ``None``: no cap."""
    cache_max_bytes: int | None = None
    """Bi-encoders only: cache document embeddings, at most this many bytes; ``None``: no cap. Either bound on
    its own turns the cache on; with both ``None`` there is no cache."""
    local_files_only: bool = False
    """Never download: use local directories and the Hugging Face cache only (like ``HF_HUB_OFFLINE=1``)."""
    revision: str | None = None
    """Hub models: the branch, tag or commit to load."""
    token: SecretStr | None = None
    """Hub models: an access token for private or gated models (``None``: ``HF_TOKEN`` or the login)."""
    cache_folder: str | None = None
    """The Hugging Face cache directory; ``None`` is the standard one."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    _lazy: LazyReranker = PrivateAttr(default_factory=LazyReranker)

    @field_validator(*_CHECKED, mode="before")
    @classmethod
    def _check(cls, value: Any, info: ValidationInfo) -> Any:
        # The core's rule, before pydantic's lax coercion (which would take top_n=True as 1).
        return check_option(info.field_name, value)

    @model_validator(mode="after")
    def _check_together(self) -> Self:
        self._options()  # combinations: remote code in model_kwargs, a cache on a cross-encoder, ...
        return self

    def _options(self) -> ServingOptions:
        values = {name: getattr(self, name) for name in _CHECKED}
        token = None if self.token is None else self.token.get_secret_value()
        return ServingOptions(**values, token=token)

    @property
    def reranker(self) -> GumbelReranker:
        """The underlying ``GumbelReranker``: loaded on first use, reloaded when a load option changes."""
        return self._lazy.get(self._options())

    def __copy__(self) -> GumbelRerank:
        """A copy (``model_copy``) that starts with the loaded model and reloads on its own afterwards."""
        clone = super().__copy__()
        clone._lazy = copy.copy(self._lazy)
        return clone

    def _rerank(self, documents: Sequence[Document], query: str) -> list[Document]:
        docs = list(documents)
        if not docs:
            return []
        texts = [_text_of(doc, i) for i, doc in enumerate(docs)]
        ranking = rank_texts(self._lazy, self._options(), query, texts)
        return [_with_score(docs[r.index], r.score, r.truncated) for r in ranking]

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


def _with_score(doc: Document, score: float, truncated: bool) -> Document:
    """A copy of ``doc`` (same class, id and metadata) with the score added; the input is untouched."""
    try:
        metadata = copy.deepcopy(doc.metadata or {})
    except Exception:
        # Uncopyable values (locks, clients) are shared; the dict itself is still a new one.
        metadata = dict(doc.metadata or {})
    metadata["relevance_score"] = float(score)
    if truncated:
        metadata[TRUNCATED_KEY] = True
    return doc.model_copy(update={"metadata": metadata})
