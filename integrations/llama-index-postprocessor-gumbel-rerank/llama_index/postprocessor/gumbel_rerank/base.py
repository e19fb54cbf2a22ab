"""GumbelRerank: a LlamaIndex node postprocessor over the gumbel-rag reranker."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from llama_index.core.bridge.pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from gumbel_rag import GumbelReranker
from gumbel_rag.modelfiles import KindOption
from gumbel_rag.serving import LazyReranker, rank_texts
from gumbel_rag.serving_options import OPTION_NAMES, TRUNCATED_KEY, Backend, ServingOptions, check_option

__all__ = ["DEFAULT_MODEL_NAME", "GumbelRerank", "node_text"]

dispatcher = get_dispatcher(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
RETRIEVAL_SCORE_KEY = "retrieval_score"
# Options checked by the core's rule for each (the token is a SecretStr, which pydantic checks).
_CHECKED = tuple(name for name in OPTION_NAMES if name != "token")


def node_text(node: BaseNode, metadata_mode: MetadataMode = MetadataMode.EMBED) -> str:
    """The text GumbelRerank scores for a node (and mine_qa_log writes): "" when the node has no text."""
    body = node.get_content(metadata_mode=MetadataMode.NONE) or ""
    if not body.strip():
        # Metadata alone is not evidence: a node with no text is scored as empty text.
        return ""
    return node.get_content(metadata_mode=metadata_mode) or ""


class GumbelRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes with a gumbel-rag reranker (the offline default or your fine-tuned model)."""

    # A misspelt option (topn=5) must fail loudly rather than silently keep the default; an assignment
    # (rerank.top_n = 0) is checked like a constructor argument.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", validate_assignment=True)

    model: str | None = Field(
        default=None,
        description="Model directory or Hugging Face Hub name (downloaded on first use); None uses the "
        "packaged default (all-MiniLM-L6-v2).",
    )
    top_n: int | None = Field(default=3, description="Number of nodes to return; None returns all.")
    score_threshold: float | None = Field(
        default=None, description="Drop nodes whose returned score is below this value."
    )
    scale_score: bool = Field(
        default=False,
        description="Return scores in [0, 1]: (cosine + 1) / 2 for a bi-encoder, sigmoid(logit) for a "
        "cross-encoder.",
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
    kind: KindOption = Field(
        default="auto", description="Model kind; 'auto' detects it from the model files."
    )
    max_length: int | None = Field(
        default=None, description="Token limit per input; None keeps the model's own limit."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow custom model code (trusted models only)."
    )
    model_kwargs: dict[str, Any] | None = Field(
        default=None, description="Extra transformers model arguments."
    )
    tokenizer_kwargs: dict[str, Any] | None = Field(default=None, description="Extra tokenizer arguments.")
    config_kwargs: dict[str, Any] | None = Field(default=None, description="Extra model config arguments.")
    backend: Backend = Field(
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
    local_files_only: bool = Field(
        default=False, description="Never download; use local directories and the Hugging Face cache only."
    )
    revision: str | None = Field(default=None, description="Hub models: branch, tag or commit to load.")
    # Excluded from to_dict/to_json: a secret is not written into a saved configuration.
    token: SecretStr | None = Field(
        default=None, exclude=True, description="Hub models: access token for private or gated models."
    )
    cache_folder: str | None = Field(default=None, description="Hugging Face cache directory.")

    _lazy: LazyReranker = PrivateAttr(default_factory=LazyReranker)

    @field_validator(*_CHECKED, mode="before")
    @classmethod
    def _check(cls, value: Any, info: ValidationInfo) -> Any:
        # The core's rule, before pydantic's lax coercion (which would take top_n=True as 1).
        return check_option(info.field_name, value)

    @model_validator(mode="after")
    def _check_together(self) -> GumbelRerank:
        self._options()  # combinations: remote code in model_kwargs, a cache on a cross-encoder, ...
        return self

    @classmethod
    def class_name(cls) -> str:
        """Registry name used by LlamaIndex serialization."""
        return "GumbelRerank"

    def _options(self) -> ServingOptions:
        values = {name: getattr(self, name) for name in _CHECKED}
        token = None if self.token is None else self.token.get_secret_value()
        return ServingOptions(**values, token=token)

    @property
    def reranker(self) -> GumbelReranker:
        """The underlying gumbel-rag reranker: loaded on first use, reused, reloaded if its options change."""
        return self._lazy.get(self._options())

    def __copy__(self) -> GumbelRerank:
        """A copy (``model_copy``) that starts with the loaded model and reloads on its own afterwards."""
        clone = super().__copy__()
        clone._lazy = copy.copy(self._lazy)
        return clone

    def _model_label(self) -> str:
        return self.model or DEFAULT_MODEL_NAME

    def _output_node(self, original: NodeWithScore, score: float, truncated: bool) -> NodeWithScore:
        # Fresh NodeWithScore objects so the caller's list keeps its retrieval scores.
        extra: dict[str, Any] = {}
        if self.keep_retrieval_score:
            extra[RETRIEVAL_SCORE_KEY] = original.score
        if truncated:
            extra[TRUNCATED_KEY] = True
        if not extra:
            return NodeWithScore(node=original.node, score=score)
        src = original.node
        # A shallow copy with its own metadata dict and exclusion lists: the caller's node stays as is,
        # and the bookkeeping keys do not leak into LLM prompts or embeddings.
        node = src.model_copy(
            update={
                "metadata": {**src.metadata, **extra},
                "excluded_llm_metadata_keys": _with_keys(src.excluded_llm_metadata_keys, extra),
                "excluded_embed_metadata_keys": _with_keys(src.excluded_embed_metadata_keys, extra),
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
            # Empty input loads no model, but the events above and below still fire.
            texts = [node_text(n.node, self.metadata_mode) for n in nodes]
            ranking = rank_texts(self._lazy, self._options(), query_bundle.query_str, texts)
            new_nodes = [self._output_node(nodes[r.index], r.score, r.truncated) for r in ranking]
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


def _with_keys(keys: list[str], extra: dict[str, Any]) -> list[str]:
    return [*keys, *(key for key in extra if key not in keys)]
