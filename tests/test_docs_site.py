"""The mkdocs site's parts: navigation, the generated CLI page, the mask figure, the README's pointers.

scripts/test.sh builds the whole site with ``mkdocs build --strict``; these tests pin what that build
cannot see (a page left out of the navigation on purpose, a CLI option missing from the page).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from gumbel_rag.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_MODULES = [
    "reranker",
    "gumbel",
    "losses",
    "readers",
    "data",
    "evaluation",
    "metrics",
    "trainer",
    "testing",
]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hook():
    return _load(DOCS / "_hooks" / "cli_reference.py", "cli_reference")


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf8")
    nav = text[text.index("\nnav:") :]
    return re.findall(r"([\w/-]+\.md)\s*$", nav, flags=re.MULTILINE)


def test_every_page_is_in_the_navigation() -> None:
    nav = set(_nav_pages())
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "_hooks" not in p.parts}
    assert pages - nav == set(), "pages missing from mkdocs.yml nav"
    # Generated at build time (cli.md) or written by other work (results, performance): in the nav anyway.
    assert {"index.md", "method.md", "cli.md", "results.md", "performance.md", "evaluate.md"} <= nav
    for how_to in ["training.md", "langchain.md", "llamaindex.md", "haystack.md", "scaling.md"]:
        assert how_to in nav


def test_api_reference_covers_the_public_modules() -> None:
    nav = set(_nav_pages())
    for module in API_MODULES:
        page = DOCS / "api" / f"{module}.md"
        assert f"api/{module}.md" in nav
        assert f"::: gumbel_rag.{module}" in page.read_text(encoding="utf8")


def test_cli_page_is_generated_from_the_parser(hook) -> None:
    page = hook.render()
    parser = build_parser()
    assert parser.description in page
    for name, command in hook.iter_commands(parser):
        assert f"## `gumbel-rag {name}`" in page
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in page, f"{name} {option} missing from the CLI page"
    # The table carries the defaults: required options, flags, values and help-described ones.
    assert "| `--output` | required |" in page
    assert "| `--no-noise` | off |" in page
    assert "| `--eval-k` | `2,5` |" in page
    assert "| `--model` | all-MiniLM-L6-v2 | reranker name or path |" in page


def test_cli_page_does_not_depend_on_the_terminal(hook, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    narrow = hook.render()
    monkeypatch.setenv("COLUMNS", "200")
    assert hook.render() == narrow


def test_hook_adds_the_cli_page_and_stubs_only_for_missing_pages(hook, tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    from mkdocs.config import load_config
    from mkdocs.structure.files import File, Files

    config = load_config(str(ROOT / "mkdocs.yml"))
    written = File("results.md", str(tmp_path), str(tmp_path / "site"), use_directory_urls=True)
    # Through mkdocs' own event dispatch, which also proves mkdocs.yml registers the hook.
    files = config.plugins.on_files(Files([written]), config=config)
    by_path = {f.src_uri: f for f in files}
    assert by_path["results.md"] is written  # an existing page is never replaced by the stub
    assert "performance.md" in by_path and "cli.md" in by_path
    assert by_path["cli.md"].content_string == hook.render()


def test_mask_figure_comes_from_the_real_mask(tmp_path: Path) -> None:
    script = _load(ROOT / "scripts" / "mask_figure.py", "mask_figure")
    png = script.draw(tmp_path / "mask.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    committed = DOCS / "figures" / "relaxed_topk_mask.png"
    assert committed.is_file() and committed == script.DEFAULT_OUTPUT
    assert "figures/relaxed_topk_mask.png" in (DOCS / "method.md").read_text(encoding="utf8")


def test_readme_has_a_quickstart_per_framework_and_points_at_the_site() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf8")
    blocks = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL))
    for module in [
        "langchain_gumbel",
        "llama_index.postprocessor.gumbel_rerank",
        "haystack_integrations.components.rankers.gumbel",
    ]:
        assert f"from {module} import" in blocks, f"no runnable {module} quickstart in the README"
    assert "mkdocs serve" in text
    assert "mkdocs build --strict" in (ROOT / "scripts" / "test.sh").read_text(encoding="utf8")
