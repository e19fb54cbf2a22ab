"""Documents to rank, as ``gumbel-rag rerank --documents`` reads them: any corpus file, or standard input.

The same containers as a corpus (JSON Lines, a JSON array, CSV/TSV, Parquet, ``.txt`` with one document a
line, any of them gzipped), read the way QA logs are read (a byte-order mark is dropped, JSON Lines are
split at ``\\n`` only, so U+2028 inside a string is text). A row is a JSON string or an object with a
``text`` (and optional ``title``, scored as ``"title: text"`` like every candidate); each document is
kept exactly as it was given, for the output.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gumbel_rag.data.formats.qalog import (
    check_text,
    container_of,
    fail,
    parse_candidate,
    read_bytes,
    read_rows,
    rows_of_bytes,
)
from gumbel_rag.data.schema import Candidate, DataError

__all__ = ["STDIN", "Document", "load_documents", "text_lines"]

STDIN = "-"


@dataclass
class Document:
    """A document as given (a string or the row's object, unchanged) and the candidate that is scored."""

    raw: Any
    candidate: Candidate


def text_lines(name: str, data: bytes) -> list[tuple[int, str]]:
    """The non-blank lines of UTF-8 text, stripped, with their 1-based line numbers."""
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise fail((name, number), None, f"not valid UTF-8 (offset {exc.start})", "not UTF-8") from None
        if text:
            lines.append((number, text))
    return lines


def _is_text_file(path: Path) -> bool:
    return path.name.lower().removesuffix(".gz").endswith(".txt")


def _from_text(name: str, data: bytes) -> list[Document]:
    documents = []
    for number, line in text_lines(name, data):
        check_text(line, (name, number), "text")
        documents.append(Document(line, Candidate(text=line)))
    return documents


def _from_rows(rows: list[tuple[int, Any]], name: str, encoded: bool) -> list[Document]:
    documents = []
    for line, row in rows:
        if isinstance(row, DataError):
            raise row
        where = (name, line)
        if isinstance(row, dict) and row.get("text") is None:
            raise fail(where, "text", "missing: every document needs a text", "candidate without text")
        # An empty CSV cell means "absent" to the parser; the output keeps it as it was.
        cells = row
        if encoded and isinstance(row, dict):
            cells = {k: None if v == "" else v for k, v in row.items()}
        documents.append(Document(row, parse_candidate(cells, where, "", encoded)[0]))
    return documents


def _from_stdin(stream: BinaryIO) -> list[Document]:
    data = stream.read().removeprefix(b"\xef\xbb\xbf")
    name = "<stdin>"
    # JSON when it starts like JSON (an array, an object, a string), else plain text, a document a line.
    if data.lstrip()[:1] in (b"[", b"{", b'"'):
        rows, encoded = rows_of_bytes(name, data, "json", raw=True)
        return _from_rows(rows, name, encoded)
    return _from_text(name, data)


def load_documents(path: str | Path, *, stdin: BinaryIO | None = None) -> list[Document]:
    """Every document of a file (``"-"``: standard input, JSON or plain text), in order; bad rows raise.

    Raises FileNotFoundError / IsADirectoryError for a path that is not a file, and DataError naming the
    line for a bad row or an empty input.
    """
    if str(path) == STDIN:
        documents = _from_stdin(stdin if stdin is not None else sys.stdin.buffer)
        name = "<stdin>"
    else:
        p = Path(path)
        name = str(path)
        if p.is_dir():
            raise IsADirectoryError(f"{path} is a directory; expected a documents file")
        if not p.is_file():
            raise FileNotFoundError(f"no such documents file: {path}")
        if _is_text_file(p):
            documents = _from_text(name, read_bytes(p))
        else:
            container_of(p)  # a clear error for an extension that names no container
            rows, encoded = read_rows(p, raw=True)
            documents = _from_rows(rows, name, encoded)
    if not documents:
        raise DataError("no documents", path=name, reason="empty file")
    return documents
