"""QALogRecorder in real Haystack pipelines: BM25 retrieval from an InMemoryDocumentStore, GumbelRanker,
a generator, YAML round trips, async runs, and `gumbel-rag train` on the captured log.

No LLM service runs here. Most tests use a small Haystack component that returns canned replies
(`CannedChatGenerator` below), so that the answers are known; the store, retriever, ranker, prompt builder
and recorder are the real ones. One test runs the real `TransformersChatGenerator` (transformers-haystack)
over a tiny random local causal LM, the path an application serving a local model takes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from haystack import Document, Pipeline, component
from haystack.components.builders import ChatPromptBuilder
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.core.errors import DeserializationError, PipelineRuntimeError
from haystack.dataclasses import ChatMessage
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import ComponentDevice
from haystack_integrations.components.rankers.gumbel import GumbelRanker, QALogRecorder

from gumbel_rag.data import QALogWriter, load_examples, write_qalog
from gumbel_rag.data.schema import Candidate, QAExample

CORPUS = [
    Document(
        id="eiffel", content="The Eiffel Tower is a wrought-iron tower in Paris, France.", meta={"t": "E"}
    ),
    Document(id="louvre", content="The Louvre in Paris is the most visited art museum.", meta={"t": "L"}),
    Document(id="berlin", content="Berlin is the capital and largest city of Germany.", meta={"t": "B"}),
    Document(id="tower", content="A tower is a tall structure, taller than it is wide.", meta={"t": "T"}),
    Document(
        id="iron", content="Wrought iron is an iron alloy with a very low carbon content.", meta={"t": "I"}
    ),
    Document(
        id="photo", content="Photosynthesis turns light into chemical energy in plants.", meta={"t": "P"}
    ),
]
# query -> (the document that answers it, the canned reply)
QUERIES = {
    "Which wrought-iron tower stands in Paris?": ("eiffel", "The Eiffel Tower"),
    "Which Paris museum is the most visited?": ("louvre", "The Louvre"),
    "What is the capital of Germany?": ("berlin", "Berlin"),
}
TEMPLATE = [
    ChatMessage.from_user("{% for d in documents %}{{ d.content }}\n{% endfor %}Question: {{ query }}")
]


@component
class CannedChatGenerator:
    """Stands in for a chat generator (no LLM service here): replies from a table, or raises."""

    def __init__(self, replies: dict[str, str] | None = None, fail: bool = False) -> None:
        self.replies = dict(replies or {})
        self.fail = fail

    @component.output_types(replies=list[ChatMessage])
    def run(self, messages: list[ChatMessage]) -> dict[str, Any]:
        if self.fail:
            raise TimeoutError("the LLM timed out")
        prompt = messages[-1].text or ""
        reply = next((r for q, r in self.replies.items() if q in prompt), "I do not know")
        return {"replies": [ChatMessage.from_assistant(reply)]}


def rag_pipeline(recorder: QALogRecorder, ranker: GumbelRanker, generator: Any = None) -> Pipeline:
    store = InMemoryDocumentStore(index=f"qa-log-{uuid.uuid4()}")
    store.write_documents(CORPUS)
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=5))
    pipe.add_component("ranker", ranker)
    pipe.add_component("prompt", ChatPromptBuilder(template=TEMPLATE, required_variables="*"))
    replies = {q: r for q, (_, r) in QUERIES.items()}
    pipe.add_component("llm", generator or CannedChatGenerator(replies))
    pipe.add_component("recorder", recorder)
    pipe.connect("retriever.documents", "ranker.documents")
    pipe.connect("ranker.documents", "prompt.documents")
    pipe.connect("prompt.prompt", "llm.messages")
    pipe.connect("llm.replies", "recorder.replies")
    pipe.connect("retriever.documents", "recorder.documents")
    pipe.connect("ranker.documents", "recorder.ranked_documents")
    return pipe


def inputs(query: str, run_id: str | None = None) -> dict[str, Any]:
    recorder: dict[str, Any] = {"query": query} if run_id is None else {"query": query, "run_id": run_id}
    return {
        "retriever": {"query": query},
        "ranker": {"query": query},
        "prompt": {"query": query},
        "recorder": recorder,
    }


@pytest.fixture
def ranker(tiny_bi_encoder_dir: Path) -> GumbelRanker:
    return GumbelRanker(model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"), top_k=2)


def test_a_run_records_candidates_picks_and_the_reply(ranker: GumbelRanker, tmp_path: Path) -> None:
    pipe = rag_pipeline(QALogRecorder(str(tmp_path / "qa.jsonl"), metadata={"app": "docs-bot"}), ranker)
    query = "Which wrought-iron tower stands in Paris?"
    out = pipe.run(inputs(query, run_id="run-1"), include_outputs_from={"retriever", "ranker"})
    recorded = out["recorder"]
    assert recorded["run_id"] == "run-1" and recorded["replies"][0].text == "The Eiffel Tower"
    assert recorded["documents"] == out["retriever"]["documents"]
    assert recorded["ranked_documents"] == out["ranker"]["documents"]
    (ex,), summary = load_examples(tmp_path / "qa.jsonl")
    assert not summary.skipped and ex.id == "run-1" and ex.metadata["app"] == "docs-bot"
    assert ex.question == query and ex.answers == ["The Eiffel Tower"]
    retrieved = out["retriever"]["documents"]
    assert [c.id for c in ex.candidates] == [d.id for d in retrieved] and len(retrieved) == 5
    assert [c.metadata["retrieval_score"] for c in ex.candidates] == pytest.approx(
        [d.score for d in retrieved], rel=1e-5
    )
    assert ex.candidates[0].metadata["t"] == retrieved[0].meta["t"]
    ranked = out["ranker"]["documents"]
    assert [ex.candidates[i].id for i in ex.metadata["picked"]] == [d.id for d in ranked]
    assert [ex.candidates[i].metadata["rerank_score"] for i in ex.metadata["picked"]] == pytest.approx(
        [d.score for d in ranked], rel=1e-5
    )


def recording_pipeline(recorder: QALogRecorder, ranker: GumbelRanker) -> Pipeline:
    """Retrieval, ranking and the recorder, the replies given as an input: only allowlisted components."""
    store = InMemoryDocumentStore(index=f"qa-log-{uuid.uuid4()}")
    store.write_documents(CORPUS)
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=5))
    pipe.add_component("ranker", ranker)
    pipe.add_component("recorder", recorder)
    pipe.connect("retriever.documents", "ranker.documents")
    pipe.connect("retriever.documents", "recorder.documents")
    pipe.connect("ranker.documents", "recorder.ranked_documents")
    return pipe


def test_yaml_round_trip_keeps_every_option_and_the_redact_function(
    tiny_bi_encoder_dir: Path, tmp_path: Path
) -> None:
    import html

    recorder = QALogRecorder(
        str(tmp_path / "qa.jsonl"),
        max_bytes=10_000,
        sample_rate=1.0,
        redact=html.escape,
        metadata={"app": "docs-bot"},
        meta_fields_to_embed=["t"],
    )
    ranker = GumbelRanker(
        model=tiny_bi_encoder_dir, device=ComponentDevice.from_str("cpu"), top_k=2, meta_fields_to_embed=["t"]
    )
    yaml_text = recording_pipeline(recorder, ranker).dumps()
    assert "haystack_integrations.components.rankers.gumbel.qa_log.QALogRecorder" in yaml_text
    assert "redact: html.escape" in yaml_text
    # A function from a module off Haystack's allowlist loads only when the user allows it.
    with pytest.raises(DeserializationError, match="not on the trusted-module allowlist"):
        Pipeline.loads(yaml_text)
    loaded = Pipeline.loads(yaml_text, allowed_modules=["html"])
    again = loaded.get_component("recorder")
    assert isinstance(again, QALogRecorder) and again.to_dict() == recorder.to_dict()
    assert again.redact is html.escape
    query = "Which Paris museum is the most visited?"
    data = {"retriever": {"query": query}, "ranker": {"query": query}}
    loaded.run({**data, "recorder": {"query": query, "replies": ["The <Louvre>"]}})
    (ex,), _ = load_examples(tmp_path / "qa.jsonl")
    assert ex.answers == ["The &lt;Louvre&gt;"] and ex.metadata["app"] == "docs-bot"
    # The text the ranker scores (meta field, then content), so the picks match their candidates.
    assert ex.candidates[0].text == "L\n" + CORPUS[1].content and len(ex.metadata["picked"]) == 2
    # A pipeline without a redact function loads on the default allowlist, no flags.
    plain = recording_pipeline(QALogRecorder(str(tmp_path / "plain.jsonl")), ranker_copy(ranker)).dumps()
    assert isinstance(Pipeline.loads(plain).get_component("recorder"), QALogRecorder)


def ranker_copy(ranker: GumbelRanker) -> GumbelRanker:
    return GumbelRanker.from_dict(ranker.to_dict())


def test_async_runs_and_a_failed_generator(ranker: GumbelRanker, tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    failing = rag_pipeline(QALogRecorder(str(path)), ranker, CannedChatGenerator(fail=True))
    with pytest.raises(PipelineRuntimeError, match="the LLM timed out"):
        failing.run(inputs("What is the capital of Germany?"))
    assert not path.exists()

    pipe = rag_pipeline(QALogRecorder(str(path)), ranker_copy(ranker))

    async def run_all() -> None:
        await asyncio.gather(*(pipe.run_async(inputs(q)) for q in QUERIES))

    asyncio.run(run_all())
    examples, _ = load_examples(path)
    assert sorted(ex.question for ex in examples) == sorted(QUERIES)
    for ex in examples:
        assert ex.answers == [QUERIES[ex.question][1]]


def test_replies_as_strings_and_no_reply(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = QALogRecorder(str(tmp_path / "qa.jsonl"))
    docs = [Document(id=d.id, content=d.content, score=1.0) for d in CORPUS[:3]]
    out = recorder.run(query="Paris tower?", replies=["The Eiffel Tower"], documents=docs)
    assert out["ranked_documents"] == [] and out["replies"] == ["The Eiffel Tower"]
    none = recorder.run(query="Paris tower?", replies=[], documents=docs)
    assert none["run_id"] and "no reply text" in caplog.text
    (ex,), _ = load_examples(tmp_path / "qa.jsonl")
    assert ex.id == out["run_id"] and "picked" not in ex.metadata and len(ex.candidates) == 3
    with pytest.raises(ValueError, match=r"must end in \.jsonl"):
        QALogRecorder(str(tmp_path / "qa.csv"))


def test_capture_then_train_eval_and_serve_the_trained_model(
    ranker: GumbelRanker,
    tiny_bi_encoder_dir: Path,
    tiny_reader_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gumbel_rag.cli import main

    log = tmp_path / "qa.jsonl"
    pipe = rag_pipeline(QALogRecorder(str(log)), ranker)
    run_ids = [pipe.run(inputs(q))["recorder"]["run_id"] for q in QUERIES]
    QALogWriter(log).feedback(run_ids[0], answer="the Eiffel Tower, in Paris", rating=5)
    ids = [d.id for d in CORPUS]
    dev = [
        QAExample(q, [a], [Candidate(d.content or "", id=d.id) for d in CORPUS], gold=[ids.index(doc)])
        for q, (doc, a) in QUERIES.items()
    ]
    write_qalog(dev, tmp_path / "dev.jsonl")

    out = tmp_path / "tuned"
    code = main([
        "train", "--data", str(log), "--reranker", str(tiny_bi_encoder_dir), "--reader",
        str(tiny_reader_dir), "--k", "2", "--batch-size", "1", "--grad-accum", "1", "--lr", "1e-3",
        "--max-document-tokens", "16", "--output", str(out), "--no-progress", "--mixed-precision", "no",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "loaded 3 examples, 0 skipped" in printed and "3 steps (0 skipped)" in printed
    assert main(["eval", "--data", str(tmp_path / "dev.jsonl"), "--reranker", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3

    tuned = GumbelRanker(model=str(out), device=ComponentDevice.from_str("cpu"), top_k=2)
    served = rag_pipeline(QALogRecorder(str(log)), tuned)
    result = served.run(inputs("What is the capital of Germany?"), include_outputs_from={"ranker"})
    examples, _ = load_examples(log)
    assert len(examples) == 4 and examples[0].answers == ["the Eiffel Tower, in Paris"]
    last = examples[-1]
    assert [last.candidates[i].id for i in last.metadata["picked"]] == [
        d.id for d in result["ranker"]["documents"]
    ]


def test_a_local_transformers_generator_is_recorded_and_its_log_trains(
    ranker: GumbelRanker, tiny_reader_dir: Path, tiny_bi_encoder_dir: Path, tmp_path: Path
) -> None:
    from haystack_integrations.components.generators.transformers import TransformersChatGenerator

    from gumbel_rag.cli import main

    generator = TransformersChatGenerator(
        model=str(tiny_reader_dir),
        task="text-generation",
        device=ComponentDevice.from_str("cpu"),
        token=None,
        # The tiny model has no chat template; a plain one joins the messages.
        chat_template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}",
        generation_kwargs={"max_new_tokens": 4, "do_sample": False},
    )
    log = tmp_path / "qa.jsonl"
    pipe = rag_pipeline(QALogRecorder(str(log)), ranker, generator=generator)
    replies = [pipe.run(inputs(q))["recorder"]["replies"][0].text for q in QUERIES]
    examples, summary = load_examples(log)
    assert not summary.skipped and [ex.question for ex in examples] == list(QUERIES)
    # What the model generated is what the log holds as the answer (random words from a random model).
    assert [ex.answers for ex in examples] == [[r.strip()] for r in replies] and all(replies)
    code = main([
        "train", "--data", str(log), "--reranker", str(tiny_bi_encoder_dir), "--reader", str(tiny_reader_dir),
        "--k", "2", "--batch-size", "1", "--grad-accum", "1", "--max-document-tokens", "16",
        "--output", str(tmp_path / "tuned"), "--no-progress", "--mixed-precision", "no",
    ])  # fmt: skip
    assert code == 0 and (tmp_path / "tuned" / "model.safetensors").is_file()
