"""The ```python snippets of docs/llamaindex.md and the package README run, in order, as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gumbel_rag import GumbelReranker
from gumbel_rag.data import load_examples

PACKAGE = Path(__file__).resolve().parents[1]
DOCS = PACKAGE.parents[1] / "docs" / "llamaindex.md"
README = PACKAGE / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def run_snippets(path: Path) -> dict[str, Any]:
    blocks = FENCE.findall(path.read_text(encoding="utf8"))
    assert blocks, f"no python snippets in {path}"
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{path.name}[snippet {i}]", "exec"), namespace)
    return namespace


@pytest.fixture
def workdir(tmp_path: Path, tiny_bi_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Stands in for `gumbel-rag train --output my-reranker`, whose output directory the docs then load.
    tiny = GumbelReranker.from_pretrained(tiny_bi_encoder_dir, device="cpu")
    tiny.save_pretrained(tmp_path / "my-reranker")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_docs_page_snippets_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ns = run_snippets(DOCS)
    assert [item.node.node_id for item in ns["best"]] == ["paris", "eiffel"]
    assert [item.node.ref_doc_id for item in ns["response"].source_nodes] == ["paris", "eiffel"]
    assert ns["reranked"][0].node.ref_doc_id == "paris"
    assert ns["async_response"].source_nodes[0].node.ref_doc_id == "paris"
    assert ns["kept"][0].node.metadata["retrieval_score"] == 0.65
    assert "retrieval_score" not in ns["nodes"][2].node.metadata
    assert ns["rerank_start"].payload["model_name"] == "all-MiniLM-L6-v2"
    assert len(ns["rerank_end"].payload["nodes"]) == 2
    out = capsys.readouterr().out
    assert "paris c.md" in out
    examples, _ = load_examples(workdir / "qa_log_mined.jsonl")
    assert examples == ns["examples"] and [len(ex.candidates) for ex in examples] == [3, 3]
    assert ns["tuned"].reranker.kind == "bi-encoder"
    assert len(ns["tuned_response"].source_nodes) == 3
    # The recorder's snippet: a query and a chat, the query's feedback joined, then unregistered.
    query_row, chat_row = load_examples(workdir / "logs" / "qa_log.jsonl")[0]
    assert query_row.id == "ticket-4711" and query_row.metadata["feedback"]["answer"] == "Paris"
    assert [query_row.candidates[i].id for i in query_row.metadata["picked"]] == [
        n.node.ref_doc_id for n in ns["recorded"].source_nodes
    ]
    assert chat_row.question == "What is the capital of France?" and len(chat_row.candidates) == 3


@pytest.mark.slow
def test_readme_snippets_run(workdir: Path) -> None:
    ns = run_snippets(README)
    assert ns["response"].source_nodes[0].node.ref_doc_id == "paris"
    assert len(ns["mined"][0].candidates) == 3
