"""QALogRecorder: a Haystack component that records each answered query as a QA-log row for training."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict, logging
from haystack.dataclasses import ChatMessage
from haystack.utils import deserialize_callable, serialize_callable

from gumbel_rag.data import QALogWriter
from gumbel_rag.data.qalog_writer import RERANK_SCORE_KEY, RETRIEVAL_SCORE_KEY

from .mining import document_to_candidate
from .ranker import document_text

__all__ = ["QALogRecorder"]

logger = logging.getLogger(__name__)


def _reply_text(reply: Any) -> str | None:
    if isinstance(reply, ChatMessage):
        return reply.text
    return reply if isinstance(reply, str) else None


@component
class QALogRecorder:
    """
    Records each answered query as a QA-log row that `gumbel-rag train` reads: place it after the generator.

    Connect the retriever's `documents` (every candidate the ranker chose from), the ranker's output to
    `ranked_documents` (its picks and scores), the generator's `replies` and the query. It writes one row
    (the query, the candidates with their retrieval scores, the picks with their ranker scores, the first
    reply's text, a run id and a timestamp) and passes its inputs through, with the row's `run_id` for
    feedback later (`QALogWriter(path).feedback(run_id, answer=..., rating=...)`). A pipeline whose
    generator fails never reaches it, so a failed run writes nothing.

    ### Usage example

    ```python
    pipe.add_component("recorder", QALogRecorder("logs/qa_log.jsonl"))
    pipe.connect("retriever.documents", "recorder.documents")
    pipe.connect("ranker.documents", "recorder.ranked_documents")
    pipe.connect("llm.replies", "recorder.replies")
    ```
    """

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int | None = None,
        sample_rate: float = 1.0,
        fsync: bool = False,
        redact: Callable[[str], str] | None = None,
        metadata: dict[str, Any] | None = None,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        document_prefix: str = "",
        document_suffix: str = "",
    ) -> None:
        """
        Create a recorder writing to `path` (a `.jsonl` file, created on the first row).

        :param path: The QA log, JSON Lines.
        :param max_bytes: Rotate the file before a row would take it past this size (rotated files are kept
            beside it, `<stem>.<UTC time>.jsonl`; train on the directory). `None`: no rotation.
        :param sample_rate: The share of runs recorded, chosen by run id.
        :param fsync: Force each row to disk.
        :param redact: A function applied to every text before it is written (the query, the reply, the
            documents' text and metadata strings). Saved in YAML by its import path; its module must be
            on Haystack's deserialization allowlist to load (`Pipeline.loads(..., allowed_modules=[...])`).
        :param metadata: Added to every row's metadata (an application name, a version).
        :param meta_fields_to_embed: As on `GumbelRanker`: the document text recorded is the text the ranker
            scores, so training sees what serving sees. Set the same four text options as the ranker.
        :param embedding_separator: As on `GumbelRanker`.
        :param document_prefix: As on `GumbelRanker`.
        :param document_suffix: As on `GumbelRanker`.
        :raises ValueError: A path that is not `.jsonl`, a bad `max_bytes` or `sample_rate`.
        """
        self.path = str(path)
        self.max_bytes = max_bytes
        self.sample_rate = sample_rate
        self.fsync = fsync
        self.redact = redact
        self.metadata = dict(metadata) if metadata else None
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.document_prefix = document_prefix
        self.document_suffix = document_suffix
        self.writer = QALogWriter(
            self.path,
            max_bytes=max_bytes,
            sample_rate=sample_rate,
            redact=redact,
            fsync=fsync,
            metadata=self.metadata,
        )

    def to_dict(self) -> dict[str, Any]:
        """
        Serialize this component to a dictionary (`redact` by its import path).

        :returns: Dictionary with serialized data.
        """
        return default_to_dict(
            self,
            path=self.path,
            max_bytes=self.max_bytes,
            sample_rate=self.sample_rate,
            fsync=self.fsync,
            redact=None if self.redact is None else serialize_callable(self.redact),
            metadata=self.metadata,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
            document_prefix=self.document_prefix,
            document_suffix=self.document_suffix,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QALogRecorder:
        """
        Deserialize the component from a dictionary.

        :param data: Dictionary to deserialize from.
        :returns: Deserialized component.
        """
        params = dict(data.get("init_parameters") or {})
        if params.get("redact"):
            params["redact"] = deserialize_callable(params["redact"])
        return default_from_dict(cls, {**data, "init_parameters": params})

    def _candidate(self, document: Document, score_key: str) -> Any:
        text = document_text(
            document,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
            document_prefix=self.document_prefix,
            document_suffix=self.document_suffix,
        )
        candidate = document_to_candidate(document)
        metadata = dict(candidate.metadata)
        if document.score is not None:
            metadata[score_key] = float(document.score)
        return dataclasses.replace(candidate, text=text, metadata=metadata)

    @component.output_types(
        replies=list[ChatMessage] | list[str],
        documents=list[Document],
        ranked_documents=list[Document],
        query=str,
        run_id=str,
    )
    def run(
        self,
        query: str,
        replies: list[ChatMessage] | list[str],
        documents: list[Document],
        ranked_documents: list[Document] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """
        Write the row and pass the inputs through.

        :param query: The query (as the ranker got it).
        :param replies: The generator's replies (`ChatMessage`s or strings); the answer is the first text.
        :param documents: The retriever's documents: every candidate the ranker chose from.
        :param ranked_documents: The ranker's output (its picks, with their scores), if there is a ranker.
        :param run_id: The row's run id; a new UUID when not given.
        :returns: The inputs (`ranked_documents` as `[]` when not given) and the row's `run_id` (given
            even when sampling left the row out: feedback for it is then left out too).
        """
        run_id = str(uuid.uuid4()) if run_id is None else str(run_id)
        ranked = list(ranked_documents or [])
        out = {"replies": replies, "documents": documents, "ranked_documents": ranked, "query": query}
        answer = next((t for t in map(_reply_text, replies) if t is not None), None)
        if answer is None or not answer.strip():
            logger.warning("QALogRecorder: no reply text for query {query!r}; nothing written", query=query)
            return {**out, "run_id": run_id}
        picks = [(self._candidate(d, RERANK_SCORE_KEY), d.score) for d in ranked]
        self.writer.write(
            query,
            answer,
            [self._candidate(d, RETRIEVAL_SCORE_KEY) for d in documents],
            reranked=picks if ranked_documents is not None else None,
            run_id=run_id,
        )
        return {**out, "run_id": run_id}

    @component.output_types(
        replies=list[ChatMessage] | list[str],
        documents=list[Document],
        ranked_documents=list[Document],
        query=str,
        run_id=str,
    )
    async def run_async(
        self,
        query: str,
        replies: list[ChatMessage] | list[str],
        documents: list[Document],
        ranked_documents: list[Document] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """
        Asynchronously write the row (in a worker thread) and pass the inputs through.

        Same parameters and return value as `run`.
        """
        return await asyncio.to_thread(
            self.run,
            query=query,
            replies=replies,
            documents=documents,
            ranked_documents=ranked_documents,
            run_id=run_id,
        )
