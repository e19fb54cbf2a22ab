"""GumbelRerank: a LlamaIndex node postprocessor over the gumbel-rag reranker."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Literal

from llama_index.core.bridge.pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
)
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from gumbel_rag import GumbelReranker
from gumbel_rag.embedding_cache import check_cache_bound

__all__ = ["DEFAULT_MODEL_NAME", "GumbelRerank", "node_text"]

dispatcher = get_dispatcher(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
RETRIEVAL_SCORE_KEY = "retrieval_score"

# Loading is rare and may race when several async queries hit a fresh instance from worker threads;
# one module-level lock keeps instances picklable (BaseComponent drops unpicklable private attrs).
_LOAD_LOCK = threading.Lock()


def node_text(node: BaseNode, metadata_mode: MetadataMode = MetadataMode.EMBED) -> str:
    """The text GumbelRerank scores for a node (and mine_qa_log writes): "" when the node has no text."""
    body = node.get_content(metadata_mode=MetadataMode.NONE) or ""
    if not body.strip():
        # Metadata alone is not evidence: a node with no text is scored as empty text.
        return ""
    return node.get_content(metadata_mode=metadata_mode) or ""


class GumbelRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes with a gumbel-rag reranker (the offline default or your fine-tuned model)."""

    # A misspelt option (topn=5) must fail loudly rather than silently keep the default.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str | None = Field(
        default=None,
        description="Model directory or name; None uses gumbel-rag's offline default (all-MiniLM-L6-v2).",
    )
    top_n: int | None = Field(default=3, description="Number of nodes to return; None returns all.")
    score_threshold: float | None = Field(
        default=None, description="Drop nodes whose reranker score is below this value."
    )
    keep_retrieval_score: bool = Field(
        default=False,
        description="Store each node's retrieval score in the returned node's metadata as 'retrieval_score'.",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED,
        description="Which metadata is prepended to the node text for scoring (as for embeddings).",
    )
    device: str | None = Field(default=None, description="Torch device; None picks one automatically.")
    batch_size: int = Field(default=32, description="Pairs scored per forward pass.")
    max_length: int | None = Field(
        default=None, description="Token limit per input; None keeps the model's own limit."
    )
    trust_remote_code: bool = Field(default=False, description="Allow custom model code from the directory.")
    backend: Literal["torch", "openvino"] = Field(
        default="torch",
        description="Inference backend: 'torch' (exact) or 'openvino' (opt-in, CPU only, needs the openvino "
        "package; scores equal the exact path within ~1e-5).",
    )
    cache_max_entries: int | None = Field(
        default=None,
        description="Bi-encoders only: cache up to this many document embeddings (LRU, keyed by text); "
        "None sets no entry bound.",
    )
    cache_max_bytes: int | None = Field(
        default=None,
        description="Bi-encoders only: cap the document-embedding cache at this many bytes; "
        "None sets no byte bound.",
    )

    _reranker: GumbelReranker | None = PrivateAttr(default=None)
    _loaded_with: tuple[Any, ...] | None = PrivateAttr(default=None)

    @field_validator("model", mode="before")
    @classmethod
    def _model_path_to_str(cls, value: Any) -> Any:
        # A pathlib.Path from a training run is the common case; store it as text so to_dict() works.
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(f"top_n must be a positive integer or None, got {value}")
        return value

    @field_validator("batch_size")
    @classmethod
    def _check_batch_size(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"batch_size must be >= 1, got {value}")
        return value

    @field_validator("cache_max_entries", "cache_max_bytes", mode="before")
    @classmethod
    def _check_cache_bound(cls, value: Any, info: ValidationInfo) -> Any:
        # Before pydantic's lax coercion, which would turn True into a cache of one entry.
        return check_cache_bound(value, info.field_name)

    @classmethod
    def class_name(cls) -> str:
        """Registry name used by LlamaIndex serialization."""
        return "GumbelRerank"

    def _load_key(self) -> tuple[Any, ...]:
        return (
            self.model,
            self.device,
            self.max_length,
            self.trust_remote_code,
            self.backend,
            self.cache_max_entries,
            self.cache_max_bytes,
        )

    @property
    def reranker(self) -> GumbelReranker:
        """The underlying gumbel-rag reranker: loaded on first use, reused, reloaded if its options change."""
        key = self._load_key()
        if self._reranker is None or self._loaded_with != key:
            with _LOAD_LOCK:
                if self._reranker is None or self._loaded_with != key:
                    self._reranker = GumbelReranker.from_pretrained(
                        self.model,
                        device=self.device,
                        max_length=self.max_length,
                        batch_size=self.batch_size,
                        trust_remote_code=self.trust_remote_code,
                        backend=self.backend,
                        cache_max_entries=self.cache_max_entries,
                        cache_max_bytes=self.cache_max_bytes,
                    )
                    self._loaded_with = key
        # Batch size is a plain attribute of the loaded model: no reload needed to change it.
        self._reranker.batch_size = self.batch_size
        return self._reranker

    def _model_label(self) -> str:
        return self.model or DEFAULT_MODEL_NAME

    def _output_node(self, original: NodeWithScore, score: float) -> NodeWithScore:
        # Fresh NodeWithScore objects so the caller's list keeps its retrieval scores.
        if not self.keep_retrieval_score:
            return NodeWithScore(node=original.node, score=score)
        src = original.node
        # A shallow copy with its own metadata dict and exclusion lists: the caller's node stays as is,
        # and the bookkeeping score does not leak into LLM prompts or embeddings.
        node = src.model_copy(
            update={
                "metadata": {**src.metadata, RETRIEVAL_SCORE_KEY: original.score},
                "excluded_llm_metadata_keys": _with_key(src.excluded_llm_metadata_keys, RETRIEVAL_SCORE_KEY),
                "excluded_embed_metadata_keys": _with_key(
                    src.excluded_embed_metadata_keys, RETRIEVAL_SCORE_KEY
                ),
            }
        )
        return NodeWithScore(node=node, score=score)

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("GumbelRerank needs a query: pass query_bundle or query_str")
        nodes = list(nodes)
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self.top_n if self.top_n is not None else len(nodes),
                model_name=self._model_label(),
            )
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self._model_label(),
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            new_nodes: list[NodeWithScore] = []
            if nodes:  # empty input: no model load, but the events above and below still fire
                ranked = self.reranker.rerank(
                    query_bundle.query_str,
                    [node_text(n.node, self.metadata_mode) for n in nodes],
                    top_k=self.top_n,
                    score_threshold=self.score_threshold,
                )
                new_nodes = [self._output_node(nodes[r.index], r.score) for r in ranked]
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        # Model loading and scoring are CPU/GPU-bound: run them in a worker thread so the event loop
        # keeps serving other requests (to_thread copies the context, so spans and callbacks nest).
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)


def _with_key(keys: list[str], key: str) -> list[str]:
    return list(keys) if key in keys else [*keys, key]
