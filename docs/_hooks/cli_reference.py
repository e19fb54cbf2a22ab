"""mkdocs hook: generate the CLI reference page from ``gumbel_rag.cli.build_parser()`` at build time.

Also adds a stub for the results and performance pages while they do not exist yet, so the navigation
builds under ``--strict`` either way. Registered in mkdocs.yml (``hooks:``); tests import it directly.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from typing import Any

CLI_PAGE = "cli.md"
# Pages other work owns; until they are written the site shows where the numbers are today.
STUBS = {
    "results.md": "# Results\n\nThe measured results so far are in "
    "[Training](training.md#results-on-hotpotqa) (HotpotQA) and "
    "[The main job](training.md#the-main-job-bash-scriptsdemosh).\n",
    "performance.md": "# Performance\n\nStep times measured so far are in "
    "[Training](training.md#results-on-hotpotqa); memory as the reader grows is in "
    "[Scaling out](scaling.md).\n",
}
# A fixed width, so the page does not depend on the terminal that builds the site.
HELP_WIDTH = 100
# "(default: all)" in a help string: the default column shows it instead.
_DEFAULT_IN_HELP = re.compile(r"\s*\(default:? ([^)]*)\)")


def iter_commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Yield (name, parser) for every subcommand, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _help_text(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        return parser.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _default(action: argparse.Action, help_text: str) -> tuple[str, str]:
    """The default column and the help text; an unset default that the help spells out is moved over."""
    said = _DEFAULT_IN_HELP.search(help_text) if action.default is None else None
    if said:
        return said.group(1), _DEFAULT_IN_HELP.sub("", help_text, count=1)
    return _default_value(action), help_text


def _default_value(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if action.default is None:
        return ""
    if isinstance(action.default, tuple | list):
        return "`" + ",".join(str(v) for v in action.default) + "`"
    return f"`{action.default}`"


def _option(action: argparse.Action) -> str:
    names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.choices:
        names += " {" + ", ".join(f"`{c}`" for c in action.choices) + "}"
    return names


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """Return the CLI reference page as Markdown: each command's description, usage and option table."""
    if parser is None:
        from gumbel_rag.cli import build_parser

        parser = build_parser()
    out = [
        "# CLI reference",
        "",
        "Generated from the CLI itself (`gumbel_rag.cli.build_parser()`) every time the site is built, "
        "so it always matches `gumbel-rag COMMAND --help`.",
        "",
        "```text",
        _help_text(parser).rstrip(),
        "```",
    ]
    for name, command in iter_commands(parser):
        out += ["", f"## `gumbel-rag {name}`", "", _cell(command.description or ""), ""]
        out += ["```text", _help_text(command).split("\n\n")[0].rstrip(), "```", ""]
        out += ["| option | default | meaning |", "|---|---|---|"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            default, help_text = _default(
                action, (action.help or "") % {**vars(action), "prog": command.prog}
            )
            out.append(f"| {_option(action)} | {_cell(default)} | {_cell(help_text)} |")
    return "\n".join(out) + "\n"


def on_files(files: Any, config: Any) -> Any:
    """mkdocs event: add the generated CLI page, and stubs for pages that are not written yet."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, CLI_PAGE, content=render()))
    for name, content in STUBS.items():
        if files.get_file_from_path(name) is None:
            files.append(File.generated(config, name, content=content))
    return files
