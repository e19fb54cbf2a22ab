"""QALogCallbackHandler: record a LangChain RAG application's runs as a QA log for ``gumbel-rag train``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage

from gumbel_rag.data import PendingRuns, QALogWriter, QARun
from gumbel_rag.data.qalog_writer import as_writer
from langchain_gumbel.mining import document_to_candidate

__all__ = ["QALogCallbackHandler"]

logger = logging.getLogger(__name__)

# Where GumbelRerank (and LangChain's other compressors) put the reranker's score.
RELEVANCE_SCORE_KEY = "relevance_score"
# Output keys looked up, in this order, when the top-level run returns a dict and no output_key is set.
ANSWER_KEYS = ("answer", "output", "result", "text", "content")
QUESTION_KEYS = ("question", "query", "input")
_TREE = "langchain"  # QARun.scratch key for this handler's view of the run


@dataclass
class _Retrieval:
    parent: str | None
    query: str
    children: list[str] = field(default_factory=list)
    documents: list[Document] | None = None


@dataclass
class _Tree:
    retrievals: dict[str, _Retrieval] = field(default_factory=dict)
    input_question: str | None = None


def _reranked(documents: Any) -> list[Document] | None:
    """``documents`` if it is a list of Documents carrying a reranker's score (a compressor's output)."""
    if not isinstance(documents, Sequence) or isinstance(documents, str) or not documents:
        return None
    if all(isinstance(d, Document) and RELEVANCE_SCORE_KEY in (d.metadata or {}) for d in documents):
        return list(documents)
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, BaseMessage):
        return str(value.text)
    if isinstance(value, str):
        return value
    return None


class QALogCallbackHandler(BaseCallbackHandler):
    """Write one QA-log row per top-level run of a LangChain RAG chain: question, candidates, picks, answer.

    Setup:
        ```python
        from langchain_gumbel import QALogCallbackHandler

        handler = QALogCallbackHandler("logs/qa_log.jsonl", sample_rate=0.5)
        chain.invoke("Where is Quessly Works?", config={"callbacks": [handler]})
        ```

    For each top-level run it records the query the retriever was given (the run's input when no retriever
    ran), every document the first-stage retriever returned (the list a reranker inside a
    ``ContextualCompressionRetriever``, or a compressor called in the chain, chose from), the reranker's
    picks and scores (``metadata["relevance_score"]``, as GumbelRerank writes it) and the answer: the
    run's output when it is a string or a message, or ``output[output_key]`` (by default the first of
    "answer", "output", "result", "text", "content" present). A run that raises writes nothing. Works with
    ``invoke``, ``ainvoke``, ``batch``, ``abatch``, ``stream`` and ``astream``. The row's run id is the
    top-level run id: pass ``config={"run_id": uuid}`` to know it, and give feedback later with
    ``handler.writer.feedback(str(uuid), answer=..., rating=...)``.

    ``path_or_writer``: a ``.jsonl`` path, or a :class:`gumbel_rag.data.QALogWriter` to share (then set
    ``max_bytes``, ``sample_rate``, ``redact``, ``fsync`` and ``metadata`` on it).
    """

    # Events are handled where they happen (no executor hop): they stay in order, and each is quick.
    run_inline = True

    def __init__(
        self,
        path_or_writer: QALogWriter | str | os.PathLike[str],
        *,
        output_key: str | None = None,
        question_key: str | None = None,
        max_bytes: int | None = None,
        sample_rate: float | None = None,
        redact: Callable[[str], str] | None = None,
        fsync: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record into ``path_or_writer``; ``output_key`` / ``question_key`` name the dict entries to read."""
        super().__init__()
        self.writer = as_writer(
            path_or_writer,
            max_bytes=max_bytes,
            sample_rate=sample_rate,
            redact=redact,
            fsync=fsync,
            metadata=metadata,
        )
        self.output_key = output_key
        self.question_key = question_key
        self._runs = PendingRuns(self.writer)

    # ------------------------------------------------------------------ reading runs

    def _tree(self, run: QARun) -> _Tree:
        return run.scratch.setdefault(_TREE, _Tree())

    def _question_of(self, inputs: Any) -> str | None:
        text = _text(inputs)
        if text is not None or not isinstance(inputs, Mapping):
            return text
        keys = (self.question_key,) if self.question_key else QUESTION_KEYS
        return next((t for t in (_text(inputs.get(k)) for k in keys) if t), None)

    def _answer_of(self, outputs: Any) -> str | None:
        if isinstance(outputs, Mapping):
            keys = (self.output_key,) if self.output_key else ANSWER_KEYS
            return next((t for t in (_text(outputs.get(k)) for k in keys) if t is not None), None)
        return _text(outputs)

    @staticmethod
    def _first_stage(tree: _Tree, retrieval: _Retrieval) -> list[Document]:
        """The documents ``retrieval`` chose from: its child retrievers' output (its own, if it has none)."""
        if not retrieval.children:
            return list(retrieval.documents or [])
        return [d for child in retrieval.children for d in tree.retrievals[child].documents or []]

    def _settle(self, run: QARun, tree: _Tree, retrieval: _Retrieval) -> None:
        """Candidates and picks from an outermost retrieval that just ended (the last one wins)."""
        picks = _reranked(retrieval.documents) if retrieval.children else None
        run.candidates = [document_to_candidate(d) for d in self._first_stage(tree, retrieval)]
        run.reranked = None if picks is None else self._picks(picks)
        run.question = retrieval.query

    @staticmethod
    def _picks(documents: list[Document]) -> list[tuple[Any, float | None]]:
        return [(document_to_candidate(d), d.metadata.get(RELEVANCE_SCORE_KEY)) for d in documents]

    # ------------------------------------------------------------------ callbacks

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A top-level chain starts a run to record; nested chains are tied to it."""
        self._runs.link(run_id, parent_run_id)
        if parent_run_id is None:
            self._tree(self._runs.get(run_id)).input_question = self._question_of(inputs)

    def on_chain_end(
        self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """A nested chain that returns reranked documents gives the picks; the top-level one, the answer."""
        if parent_run_id is not None:
            picks = _reranked(outputs)
            if picks is not None:
                self._runs.get(run_id).reranked = self._picks(picks)
            return
        run = self._runs.get(run_id)
        tree = self._tree(run)
        if run.question is None:
            # Streaming starts the run before its input is known; the end brings it.
            run.question = tree.input_question or self._question_of(kwargs.get("inputs"))
        run.answer = self._answer_of(outputs)
        if run.answer is None:
            logger.warning(
                "QA log: cannot read an answer from the output of run %s (%s); nothing written. "
                "Set output_key= to the entry that holds the answer",
                run_id,
                type(outputs).__name__,
            )
        self._runs.finish(run_id, ok=True)

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """A failed top-level run writes nothing (a failed nested step the chain recovered from is fine)."""
        if parent_run_id is None:
            self._runs.finish(run_id, ok=False)

    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember the retriever, its query and where it runs (under another retriever or not)."""
        self._runs.link(run_id, parent_run_id)
        run = self._runs.get(run_id)
        tree = self._tree(run)
        parent = None if parent_run_id is None else str(parent_run_id)
        tree.retrievals[str(run_id)] = _Retrieval(parent=parent, query=query)
        if parent in tree.retrievals:
            tree.retrievals[parent].children.append(str(run_id))

    def on_retriever_end(
        self, documents: Sequence[Document], *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Keep the documents; an outermost retriever's end settles the row's candidates and picks."""
        run = self._runs.get(run_id)
        tree = self._tree(run)
        retrieval = tree.retrievals.get(str(run_id))
        if retrieval is None:
            return
        retrieval.documents = list(documents)
        if retrieval.parent not in tree.retrievals:
            self._settle(run, tree, retrieval)
        if parent_run_id is None:  # a retriever invoked on its own: no answer, nothing to write
            self._runs.finish(run_id, ok=True)

    def on_retriever_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """A retriever invoked on its own that fails leaves nothing behind."""
        if parent_run_id is None:
            self._runs.finish(run_id, ok=False)
