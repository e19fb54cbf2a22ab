"""`gumbel-rag --help` and every command's help are complete, and the docs name only real options."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from gumbel_rag.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("gumbel-rag has no subcommands")


COMMANDS = _commands()


def test_every_command_and_option_has_help() -> None:
    parser = build_parser()
    missing = [a.dest for a in parser._actions if not (a.help or "").strip()]
    for name, command in COMMANDS.items():
        assert (command.description or "").strip(), f"gumbel-rag {name} has no description"
        missing += [
            f"{name} {a.option_strings or a.dest}" for a in command._actions if not (a.help or "").strip()
        ]
    assert not missing, f"options without help: {missing}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_exits_zero_and_lists_every_option(
    command: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    if command is None:
        assert all(name in out for name in COMMANDS)
        return
    for action in COMMANDS[command]._actions:
        assert all(option in out for option in action.option_strings)


def test_help_shows_defaults() -> None:
    train = COMMANDS["train"].format_help()
    assert "(default: 5)" in train and "(default: 2,5)" in train  # --k and the tuple --eval-k
    assert "(default: None)" not in train and "(default: False)" not in train
    # The demo trains with train's defaults, its length and evaluation interval aside.
    demo = COMMANDS["demo"].format_help()
    assert re.search(r"--k K\s+gumbel: documents the reader sees \(relaxed top-k\)\s+\(default: 5\)", demo)
    assert re.search(r"--lr LR\s+peak learning rate.*\(default: 2e-05\)", demo, re.S)
    assert re.search(r"--eval-every EVAL_EVERY\s+evaluate.*\(default: 10\)", demo, re.S)


def _documented_command_lines() -> list[tuple[str, str, str]]:
    """(file, command, rest of the line) for every `gumbel-rag COMMAND ...` in the README and docs."""
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf8").replace("\\\n", " ")  # join shell continuation lines
        for match in re.finditer(r"gumbel-rag +(\w+)([^\n`]*)", text):
            if match.group(1) in COMMANDS:
                found.append((path.name, match.group(1), match.group(2)))
    return found


def test_documented_command_lines_use_real_options() -> None:
    lines = _documented_command_lines()
    assert len(lines) > 5
    wrong = []
    for name, command, rest in lines:
        known = {opt for action in COMMANDS[command]._actions for opt in action.option_strings}
        wrong += [
            f"{name}: gumbel-rag {command} {flag}"
            for flag in re.findall(r"(?<!\w)--[a-z][\w-]*", rest)
            if flag not in known
        ]
    assert not wrong, f"documented options that the CLI does not have: {wrong}"


def _expected(cell: str) -> object:
    cell = cell.strip().strip("`")
    if cell in ("off", "none"):
        return {"off": False, "none": None}[cell]
    try:
        return float(cell)
    except ValueError:
        return cell


def test_training_options_table_matches_the_parser() -> None:
    """docs/training.md's option table names real `train` options with their real defaults."""
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf8")
    actions = {opt: a for a in COMMANDS["train"]._actions for opt in a.option_strings}
    rows = re.findall(r"^\| ((?:`--[\w-]+`(?:, )?)+) \| ([^|]*) \|", text, flags=re.MULTILINE)
    assert len(rows) > 8
    for options_cell, defaults_cell in rows:
        options = re.findall(r"`(--[\w-]+)`", options_cell)
        for option in options:
            assert option in actions, f"docs/training.md lists {option}, which `gumbel-rag train` lacks"
        defaults = defaults_cell.split(",")
        if len(defaults) != len(options):
            continue
        for option, cell in zip(options, defaults, strict=True):
            actual, expected = actions[option].default, _expected(cell)
            if actual is None and expected is not None:
                continue  # a described default ("all-MiniLM-L6-v2"), not a value
            if isinstance(expected, float) and not isinstance(actual, bool):
                assert float(actual) == expected, f"{option}: docs say {cell.strip()}, the CLI {actual}"
            elif expected in (None, False):
                assert actual == expected, f"{option}: docs say {cell.strip()}, the CLI {actual}"


def test_help_lists_the_data_and_error_options() -> None:
    """The options for the field's formats, skipped rows and tracebacks are in every command's help."""
    for name, command in COMMANDS.items():
        assert "--debug" in command.format_help(), name
    for name in ("train", "eval", "mine"):
        text = COMMANDS[name].format_help()
        assert all(opt in text for opt in ("--format", "--skip-invalid", "--skipped-rows")), name
        assert "fid" in text, name
    for name in ("eval", "mine"):
        text = COMMANDS[name].format_help()
        assert all(opt in text for opt in ("--retriever", "--encoder", "--top-n")) and "BEIR" in text, name
    assert "'document'" in COMMANDS["rerank"].format_help() and "'-'" in COMMANDS["rerank"].format_help()
