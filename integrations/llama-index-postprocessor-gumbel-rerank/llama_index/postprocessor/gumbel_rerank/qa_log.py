"""QALogEventHandler: record a LlamaIndex application's queries and chats as a QA log for training."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import Any

from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.chat_engine.types import AgentChatResponse, StreamingAgentChatResponse
from llama_index.core.instrumentation import Dispatcher, get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.chat_engine import (
    StreamChatDeltaReceivedEvent,
    StreamChatEndEvent,
    StreamChatErrorEvent,
)
from llama_index.core.instrumentation.events.query import QueryEndEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent
from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent
from llama_index.core.instrumentation.span import BaseSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from llama_index.postprocessor.gumbel_rerank.mining import node_to_candidate

from gumbel_rag.data import PendingRuns, QALogWriter, QARun
from gumbel_rag.data.qalog_writer import as_writer

__all__ = ["RUN_ID_TAG", "QALogEventHandler", "QALogSpanHandler"]

logger = logging.getLogger(__name__)

# instrument_tags({RUN_ID_TAG: ...}) around a query names its row, for feedback later.
RUN_ID_TAG = "run_id"
_ANSWER = "llama_index.answer"  # QARun.scratch keys
_DELTAS = "llama_index.deltas"


def _query_text(query: Any) -> str | None:
    if isinstance(query, QueryBundle):
        return query.query_str
    return query if isinstance(query, str) else None


def _response_text(response: Any) -> str | None:
    if isinstance(response, Response | AgentChatResponse):
        return response.response
    return response if isinstance(response, str) else None


class QALogSpanHandler(BaseSpanHandler[BaseSpan]):
    """The span side of :class:`QALogEventHandler`: ties spans to their top-level span, ends runs."""

    _recorder: QALogEventHandler = PrivateAttr()

    def __init__(self, recorder: QALogEventHandler) -> None:
        """A span handler feeding ``recorder``."""
        super().__init__(open_spans={}, completed_spans=[], dropped_spans=[], current_span_ids={})
        self._recorder = recorder

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "QALogSpanHandler"

    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        """Link the span to its parent (a top-level span starts a run)."""
        self._recorder._enter(id_, parent_span_id, tags or {})
        return BaseSpan(id_=id_, parent_id=parent_span_id)

    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        """A top-level span that returns ends its run: the row is written (or, when streaming, later)."""
        span = self.open_spans.get(id_)
        if span is not None and span.parent_id is None:
            self._recorder._exit(id_, result)
        return span

    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        """A top-level span that raises ends its run with nothing written."""
        span = self.open_spans.get(id_)
        if span is not None and span.parent_id is None:
            self._recorder._runs.finish(id_, ok=False)
        return span


class QALogEventHandler(BaseEventHandler):
    """Write one QA-log row per top-level query or chat of a LlamaIndex application.

    ```python
    from llama_index.postprocessor.gumbel_rerank import QALogEventHandler

    handler = QALogEventHandler("logs/qa_log.jsonl").register()  # the root dispatcher: every engine
    response = query_engine.query("Where is Quessly Works?")
    ```

    Retrieval, rerank and query/synthesis events are tied to their top-level span (``query``, ``aquery``,
    ``chat``, ``achat``, ``stream_chat``, ...) through the span ids of a companion span handler, which
    :meth:`register` adds with it. The row holds the query the reranker ranked against (the retrieval's
    query when no reranker ran), the nodes it chose from with their retrieval scores (the
    ``ReRankStartEvent`` nodes, else the ``RetrievalEndEvent`` nodes), its picks and scores
    (``ReRankEndEvent``), its model name, and the answer: the engine's response text, collected from the
    stream for streaming responses (written when the stream ends). A query or chat that raises writes
    nothing; so does a stream that fails or is never read to its end. With several retrievals in one
    query, the last one (and its rerank) is recorded. The row's run id is the top-level span id, or the
    ``run_id`` of ``instrument_tags({"run_id": ...})`` around the call: give feedback with it later
    (``handler.writer.feedback(run_id, answer=..., rating=...)``).

    ``path_or_writer``: a ``.jsonl`` path or a :class:`gumbel_rag.data.QALogWriter` to share (then set
    ``max_bytes``, ``sample_rate``, ``redact``, ``fsync`` and ``metadata`` on it). ``metadata_mode``: the
    node text recorded, as GumbelRerank's own ``metadata_mode`` scores it (training then sees the same
    text).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Node text recorded (as GumbelRerank's metadata_mode)."
    )

    _writer: QALogWriter = PrivateAttr()
    _runs: PendingRuns = PrivateAttr()
    _span_handler: QALogSpanHandler = PrivateAttr()
    _dispatcher: Dispatcher | None = PrivateAttr(default=None)
    _saw_spans: bool = PrivateAttr(default=False)
    _warned: bool = PrivateAttr(default=False)

    def __init__(
        self,
        path_or_writer: QALogWriter | str | os.PathLike[str],
        *,
        metadata_mode: MetadataMode = MetadataMode.EMBED,
        max_bytes: int | None = None,
        sample_rate: float | None = None,
        redact: Callable[[str], str] | None = None,
        fsync: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record into ``path_or_writer``; call :meth:`register` to start."""
        super().__init__(metadata_mode=metadata_mode)
        self._writer = as_writer(
            path_or_writer,
            max_bytes=max_bytes,
            sample_rate=sample_rate,
            redact=redact,
            fsync=fsync,
            metadata=metadata,
        )
        self._runs = PendingRuns(self._writer)
        self._span_handler = QALogSpanHandler(self)

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "QALogEventHandler"

    @property
    def writer(self) -> QALogWriter:
        """The QA-log writer (``writer.feedback(run_id, ...)`` records feedback for a row)."""
        return self._writer

    @property
    def span_handler(self) -> QALogSpanHandler:
        """The companion span handler (:meth:`register` adds it; add it yourself with the event handler)."""
        return self._span_handler

    def register(self, dispatcher: Dispatcher | None = None) -> QALogEventHandler:
        """Add this handler and its span handler to ``dispatcher`` (default: the root, every engine)."""
        d = dispatcher or get_dispatcher()
        d.add_event_handler(self)
        d.add_span_handler(self._span_handler)
        self._dispatcher = d
        return self

    def unregister(self) -> None:
        """Stop recording: take both handlers off the dispatcher :meth:`register` added them to."""
        d = self._dispatcher
        if d is None:
            return
        d.event_handlers = [h for h in d.event_handlers if h is not self]
        d.span_handlers = [h for h in d.span_handlers if h is not self._span_handler]
        self._dispatcher = None

    # ------------------------------------------------------------------ spans

    def _enter(self, span_id: str, parent_id: str | None, tags: dict[str, Any]) -> None:
        self._saw_spans = True
        self._runs.link(span_id, parent_id)
        if parent_id is None and tags.get(RUN_ID_TAG) is not None:
            self._runs.get(span_id).run_id = str(tags[RUN_ID_TAG])

    def _exit(self, root: str, result: Any) -> None:
        run = self._runs.peek(root)
        if run is None:  # nothing was retrieved or answered under it (an embedding, an LLM call)
            self._runs.finish(root, ok=True)
            return
        if isinstance(result, StreamingAgentChatResponse):
            return  # the chat stream's end event finishes it
        if isinstance(result, StreamingResponse):
            result.response_gen = self._recorded(root, result.response_gen)
            return
        if isinstance(result, AsyncStreamingResponse):
            result.response_gen = self._arecorded(root, result.response_gen)
            return
        answer = _response_text(result)
        run.answer = answer if answer is not None else run.scratch.get(_ANSWER)
        self._runs.finish(root, ok=True)

    def _stream_end(self, root: str, parts: list[str]) -> None:
        self._runs.get(root).answer = "".join(parts)
        self._runs.finish(root, ok=True)

    def _recorded(self, root: str, tokens: Generator[str, None, None]) -> Generator[str, None, None]:
        parts: list[str] = []
        try:
            for token in tokens:
                parts.append(token)
                yield token
        except BaseException:
            self._runs.finish(root, ok=False)
            raise
        self._stream_end(root, parts)

    async def _arecorded(self, root: str, tokens: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
        parts: list[str] = []
        try:
            async for token in tokens:
                parts.append(token)
                yield token
        except BaseException:
            self._runs.finish(root, ok=False)
            raise
        self._stream_end(root, parts)

    # ------------------------------------------------------------------ events

    def _candidates(self, nodes: list[NodeWithScore]) -> list[Any]:
        return [node_to_candidate(n, self.metadata_mode) for n in nodes]

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Fold a retrieval, rerank, query, synthesis or chat-stream event into its run."""
        handled = (
            RetrievalEndEvent,
            ReRankStartEvent,
            ReRankEndEvent,
            QueryEndEvent,
            SynthesizeEndEvent,
            StreamChatDeltaReceivedEvent,
            StreamChatEndEvent,
            StreamChatErrorEvent,
        )
        if not isinstance(event, handled):
            return
        root = None if event.span_id is None else self._runs.root_of(event.span_id)
        if root is None:
            if not self._saw_spans and not self._warned:
                self._warned = True
                logger.warning(
                    "QA log: QALogEventHandler sees events but no spans: add it with handler.register() "
                    "(or add handler.span_handler to the dispatcher as well); nothing is recorded"
                )
            return
        self._fold(self._runs.get(root), root, event)

    def _fold(self, run: QARun, root: str, event: BaseEvent) -> None:
        if isinstance(event, RetrievalEndEvent):
            run.question = _query_text(event.str_or_query_bundle) or run.question
            run.candidates = self._candidates(list(event.nodes))
            run.reranked = run.reranker = None
        elif isinstance(event, ReRankStartEvent):
            run.question = _query_text(event.query) or run.question
            run.candidates = self._candidates(list(event.nodes))
            run.reranker = event.model_name or None
        elif isinstance(event, ReRankEndEvent):
            run.reranked = [
                (c, n.score) for c, n in zip(self._candidates(event.nodes), event.nodes, strict=True)
            ]
        elif isinstance(event, QueryEndEvent | SynthesizeEndEvent):
            run.question = run.question or _query_text(event.query)
            answer = _response_text(event.response)
            if answer is not None:
                run.scratch[_ANSWER] = answer
        elif isinstance(event, StreamChatDeltaReceivedEvent):
            run.scratch.setdefault(_DELTAS, []).append(event.delta)
        elif isinstance(event, StreamChatEndEvent):
            self._stream_end(root, run.scratch.get(_DELTAS, []))
        elif isinstance(event, StreamChatErrorEvent):
            self._runs.finish(root, ok=False)
