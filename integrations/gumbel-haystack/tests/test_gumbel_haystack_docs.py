"""Execute the ```python snippets of docs/haystack.md in order, in one namespace."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "haystack.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.slow
def test_docs_snippets_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_bi_encoder_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    blocks = python_blocks(DOC.read_text(encoding="utf8"))
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    # Stands in for the directory `gumbel-rag train --output my-reranker` writes.
    shutil.copytree(tiny_bi_encoder_dir, tmp_path / "my-reranker")

    namespace: dict = {"__name__": "docs_haystack"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{DOC.name}[python block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message names the failing block
            raise AssertionError(f"python block {i} of {DOC} failed:\n{block}") from exc

    printed = capsys.readouterr().out.splitlines()
    # The default model ranks the right passages first.
    assert printed[0].startswith("paris c.md")
    assert namespace["answer"]["ranker"]["documents"][0].id == "louvre"
    assert namespace["async_answer"]["ranker"]["documents"][0].id == "louvre"
    examples = namespace["examples"]
    assert len(examples) == 2 and all(1 <= len(ex.candidates) <= 10 for ex in examples)
    assert (tmp_path / "qa_log_mined.jsonl").is_file()
    assert (tmp_path / "qa_log_mined_by_pipeline.jsonl").is_file()
    assert sorted(d.id for d in namespace["best"]) == sorted(["eiffel", "banana", "paris"])
    assert namespace["tuned"].reranker is not None
    # The recorder's snippet: one row, with every retrieved document and the ranker's picks.
    from gumbel_rag.data import load_examples

    (row,), _ = load_examples(tmp_path / "logs" / "qa_log.jsonl")
    assert row.id == namespace["run_id"] and row.answers == ["The Louvre"]
    assert len(row.candidates) == 5 and len(row.metadata["picked"]) == 3
    assert row.metadata["feedback"]["rating"] == 5
