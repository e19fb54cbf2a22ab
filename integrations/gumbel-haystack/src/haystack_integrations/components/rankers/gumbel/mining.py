"""Mine candidates for a QA log with a Haystack retriever or pipeline, for `gumbel-rag train`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from haystack import Document
from haystack.core.pipeline.base import PipelineBase

from gumbel_rag.data import Candidate, QAExample
from gumbel_rag.data import mine_qa_log as core_mine_qa_log
from gumbel_rag.data.files import json_safe

from .ranker import GumbelRanker, document_text

__all__ = ["candidate_retriever", "document_retriever", "document_to_candidate", "mine_qa_log"]

CandidateRetriever = Callable[[str, int], list[Candidate]]
QALog = str | os.PathLike[str] | Iterable[QAExample]


def document_to_candidate(document: Document, ranker: GumbelRanker | None = None) -> Candidate:
    """
    Turn a Haystack Document into a gumbel-rag Candidate (text, id and metadata kept).

    The text is what `ranker` scores for the document (its prefixes and `meta_fields_to_embed`), or the
    plain content when `ranker` is None, so training sees the same text as inference. Missing content is
    empty text. The title is not split out: embed it with `meta_fields_to_embed=["title"]` on the ranker.
    """
    if not isinstance(document, Document):
        raise TypeError(f"expected a haystack Document, got {type(document).__name__}")
    if ranker is None:
        text = document.content or ""
    else:
        text = document_text(
            document,
            meta_fields_to_embed=ranker.meta_fields_to_embed,
            embedding_separator=ranker.embedding_separator,
            document_prefix=ranker.document_prefix,
            document_suffix=ranker.document_suffix,
        )
    return Candidate(text=text, id=document.id or None, metadata=json_safe(dict(document.meta)))


def _socket(spec: str, what: str) -> tuple[str, str]:
    component_name, dot, socket = spec.partition(".")
    if not dot or not component_name or not socket:
        raise ValueError(f"{what} entries must look like 'component.socket', got {spec!r}")
    return component_name, socket


def _pipeline_runner(
    pipeline: PipelineBase,
    query_inputs: Sequence[str] | None,
    top_k_inputs: Sequence[str] | None,
    documents_output: str | None,
) -> Callable[[str, int], list[Document]]:
    open_inputs = pipeline.inputs()
    if documents_output is None:
        producers = sorted(name for name, sockets in pipeline.outputs().items() if "documents" in sockets)
        if len(producers) != 1:
            found = ", ".join(producers) or "none"
            raise ValueError(
                f"cannot tell which component's 'documents' output to mine (found: {found}); "
                "pass documents_output='component_name'"
            )
        documents_output = producers[0]
    out_name, _, out_socket = documents_output.partition(".")
    out_socket = out_socket or "documents"
    names = set(pipeline.graph.nodes)
    if out_name not in names:
        raise ValueError(
            f"documents_output names {out_name!r}, which is not in the pipeline ({sorted(names)})"
        )

    if query_inputs is None:
        queries = [(name, "query") for name, sockets in open_inputs.items() if "query" in sockets]
        if not queries:
            raise ValueError(
                "the pipeline has no open input named 'query'; pass query_inputs=['component.socket']"
            )
    else:
        queries = [_socket(s, "query_inputs") for s in query_inputs]
    if top_k_inputs is None:
        top_ks = [(out_name, "top_k")] if "top_k" in open_inputs.get(out_name, {}) else []
    else:
        top_ks = [_socket(s, "top_k_inputs") for s in top_k_inputs]
    for name, socket in [*queries, *top_ks]:
        if socket not in open_inputs.get(name, {}):
            raise ValueError(f"{name}.{socket} is not an open input of the pipeline")

    def run(query: str, top_n: int) -> list[Document]:
        data: dict[str, dict[str, Any]] = {}
        for name, socket in queries:
            data.setdefault(name, {})[socket] = query
        for name, socket in top_ks:
            data.setdefault(name, {})[socket] = top_n
        result = pipeline.run(data=data, include_outputs_from={out_name})
        return list(result.get(out_name, {}).get(out_socket) or [])

    return run


def document_retriever(
    source: Any,
    *,
    query_inputs: Sequence[str] | None = None,
    top_k_inputs: Sequence[str] | None = None,
    documents_output: str | None = None,
) -> Callable[[str, int], list[Document]]:
    """A `fetch(question, top_n)` function over a Haystack retriever component or Pipeline (see
    `candidate_retriever` for how each is run); it returns Haystack Documents, best first."""
    if isinstance(source, PipelineBase):
        return _pipeline_runner(source, query_inputs, top_k_inputs, documents_output)
    if not callable(getattr(source, "run", None)):
        raise TypeError(
            f"expected a Haystack Pipeline or a component with run(query=..., top_k=...), "
            f"got {type(source).__name__}"
        )
    if query_inputs is not None or top_k_inputs is not None or documents_output is not None:
        raise ValueError("query_inputs, top_k_inputs and documents_output apply to Pipelines only")
    warmed = False

    def fetch(query: str, top_n: int) -> list[Document]:
        nonlocal warmed
        if not warmed and callable(getattr(source, "warm_up", None)):
            source.warm_up()
        warmed = True
        result = source.run(query=query, top_k=top_n)
        if not isinstance(result, dict) or "documents" not in result:
            raise TypeError(f"{type(source).__name__}.run() did not return a dict with 'documents'")
        return list(result["documents"] or [])

    return fetch


def candidate_retriever(
    source: Any,
    *,
    ranker: GumbelRanker | None = None,
    query_inputs: Sequence[str] | None = None,
    top_k_inputs: Sequence[str] | None = None,
    documents_output: str | None = None,
) -> CandidateRetriever:
    """
    Adapt a Haystack retriever component or Pipeline to a `retrieve(question, top_n)` function that
    returns at most `top_n` gumbel-rag Candidates, best first (what `mine_qa_log` mines with).

    A component is called as `source.run(query=question, top_k=top_n)` and must return `{"documents": [...]}`.
    A Pipeline is run with the question on every open input socket named `query` (or on `query_inputs`,
    e.g. `["retriever.query", "ranker.query"]`), `top_n` on the open `top_k` input of the component whose
    documents are mined (or on `top_k_inputs`), and the documents are read from the one component with an
    open `documents` output (or from `documents_output`, e.g. `"retriever"` or `"retriever.documents"`).
    """
    fetch = document_retriever(
        source, query_inputs=query_inputs, top_k_inputs=top_k_inputs, documents_output=documents_output
    )

    def retrieve(query: str, top_n: int) -> list[Candidate]:
        return [document_to_candidate(doc, ranker) for doc in fetch(query, top_n)[:top_n]]

    return retrieve


def mine_qa_log(
    qa_log_path: QALog,
    retriever_or_pipeline: Any,
    output_path: str | os.PathLike[str],
    top_n: int = 10,
    *,
    gold_from_answer: bool = False,
    format: str = "auto",
    skip_invalid: bool = False,
    ranker: GumbelRanker | None = None,
    query_inputs: Sequence[str] | None = None,
    top_k_inputs: Sequence[str] | None = None,
    documents_output: str | None = None,
) -> list[QAExample]:
    """
    Retrieve `top_n` candidates for every question of a QA log and write a QA log for `gumbel-rag train`.

    `qa_log_path` is any file `gumbel_rag.data.load_examples` reads (a JSONL/JSON/CSV/Parquet QA log with
    `question` and `answer(s)`, HotpotQA, MuSiQue) or a list of `QAExample`; rows that already have
    candidates are kept as they are. Each mined candidate keeps the document's content, id and meta.
    With `gold_from_answer`, the candidates that contain an answer are marked gold (otherwise gold stays
    unknown; Gumbel Reranking trains from the answers alone). `skip_invalid` skips malformed rows instead
    of raising. `ranker`, `query_inputs`, `top_k_inputs` and `documents_output` are as in
    `candidate_retriever`. The output format follows the file extension. Returns the written examples.
    """
    fetch = document_retriever(
        retriever_or_pipeline,
        query_inputs=query_inputs,
        top_k_inputs=top_k_inputs,
        documents_output=documents_output,
    )
    return core_mine_qa_log(
        qa_log_path,
        fetch,
        output_path,
        top_n=top_n,
        to_candidate=lambda document: document_to_candidate(document, ranker),
        gold_from_answer=gold_from_answer,
        format=format,
        skip_invalid=skip_invalid,
    )
