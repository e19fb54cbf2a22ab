"""The ```python snippets of docs/langchain.md and the package README run, in order, as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gumbel_rag import GumbelReranker
from gumbel_rag.data import load_examples

PACKAGE = Path(__file__).resolve().parents[1]
DOCS = PACKAGE.parents[1] / "docs" / "langchain.md"
README = PACKAGE / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def run_snippets(path: Path) -> dict[str, Any]:
    blocks = FENCE.findall(path.read_text(encoding="utf8"))
    assert blocks, f"no python snippets in {path}"
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{path.name}[snippet {i}]", "exec")
        exec(code, namespace)
    return namespace


@pytest.fixture
def workdir(tmp_path: Path, tiny_bi_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Stands in for `gumbel-rag train --output my-reranker`, whose output directory the docs then load.
    GumbelReranker.from_pretrained(tiny_bi_encoder_dir, device="cpu").save_pretrained(
        tmp_path / "my-reranker"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_docs_page_snippets_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ns = run_snippets(DOCS)
    assert [doc.id for doc in ns["best"]] == ["paris", "eiffel"]
    assert ns["docs"][0].id == "paris"
    assert ns["async_docs"][0].id == "paris"
    assert ns["reranked"][0].id == "paris"
    assert "Paris is the capital" in capsys.readouterr().out
    assert len(ns["examples"]) == 2 and len(ns["examples"][0].candidates) == 3
    assert (workdir / "qa_log_mined.jsonl").is_file()
    assert ns["tuned"].reranker.kind == "bi-encoder"
    # The recorder's snippet: one row, its feedback joined.
    (row,), _ = load_examples(workdir / "logs" / "qa_log.jsonl")
    assert row.id == str(ns["run_id"]) and row.answers == ["Paris"] and ns["answer"] == "Paris"
    assert len(row.candidates) == 3 and len(row.metadata["picked"]) == 1
    assert row.metadata["feedback"]["rating"] == 5


def test_readme_snippets_run(workdir: Path) -> None:
    ns = run_snippets(README)
    assert ns["docs"][0].id == "paris"
