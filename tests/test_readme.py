"""The README's quickstart runs as written (its python blocks, with the real default model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.slow
def test_readme_python_blocks_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _python_blocks(README.read_text(encoding="utf8"))
    assert blocks, "the README has no python quickstart"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    # The quickstart ranks the Paris passage (index 1) first.
    assert out.splitlines()[0].startswith("1 ")


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    text = README.read_text(encoding="utf8")
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf8")
    assert "bash scripts/test.sh" in ci
