"""The user's QA log (JSONL / JSON / CSV / Parquet rows), plus the row readers every format shares."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

from gumbel_rag.data.files import atomic_write, json_safe
from gumbel_rag.data.schema import Candidate, DataError, LoadSummary, QAExample

__all__ = [
    "FEEDBACK_KEY",
    "RUN_ID_KEY",
    "TIMESTAMP_KEY",
    "Container",
    "Feedback",
    "Where",
    "check_example_text",
    "check_text",
    "container_of",
    "filter_rated",
    "is_feedback_row",
    "join_feedback",
    "parse_candidate",
    "parse_feedback_row",
    "parse_qalog_row",
    "peek_row",
    "read_bytes",
    "read_rows",
    "rows_of_bytes",
    "write_qalog",
]

Container = Literal["jsonl", "json", "csv", "tsv", "parquet"]
# (path as the user gave it, 1-based line / row / record number)
Where = tuple[str, int]
Row = tuple[int, "dict[str, Any] | DataError"]  # with read_rows(raw=True), a JSON string row too

_EXTENSIONS: dict[str, Container] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_QALOG_KEYS = {"question", "answer", "answers", "candidates", "gold", "id", "metadata"}
_CANDIDATE_KEYS = {"text", "id", "title", "metadata", "gold"}
# A captured log (gumbel_rag.data.QALogWriter): rows carry these in their metadata; feedback records
# are lines {"feedback": {"run_id", "answer"?, "rating"?, "timestamp", "metadata"?}}.
FEEDBACK_KEY = "feedback"
RUN_ID_KEY = "run_id"
TIMESTAMP_KEY = "timestamp"
# Where a joined row keeps the answers it was logged with, once feedback corrected them.
LOGGED_ANSWERS_KEY = "logged_answers"


# ----------------------------------------------------------------------------- errors and types


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def fail(where: Where, field: str | None, message: str, reason: str) -> DataError:
    """A DataError located at ``where`` (callers ``raise`` it, so tracebacks point at the check)."""
    return DataError(message, path=where[0], line=where[1], field=field, reason=reason)


def decode_json_cell(value: Any, where: Where, field: str) -> Any:
    """Decode a JSON-encoded CSV/Parquet cell; non-strings pass through."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        msg = f"malformed JSON in cell: {exc.msg} (column {exc.colno})"
        raise fail(where, field, msg, "malformed JSON") from None


def as_id(value: Any, where: Where, field: str) -> str | None:
    """An optional id; integers are accepted and stored as strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise fail(where, field, f"expected a string or an integer, got {type_name(value)}", f"bad {field}")


def as_text(value: Any, where: Where, field: str, kind: str, *, empty_ok: bool = True) -> str:
    """A required string; ``kind`` names the skip reason ("missing question", "bad question", ...)."""
    if value is None:
        raise fail(where, field, "missing", f"missing {kind}")
    if not isinstance(value, str):
        raise fail(where, field, f"expected a string, got {type_name(value)}", f"bad {kind}")
    if not empty_ok and not value.strip():
        raise fail(where, field, "is empty", f"empty {kind}")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any, field: str) -> tuple[str, int, str] | None:
    """The first lone surrogate in a value (strings, lists, dicts, keys included): (field, offset, char).

    JSON escapes such as ``"\\ud800"`` decode to one; it is not text, and tokenizers fail on it.
    """
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        return (field, match.start(), match.group()) if match else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = lone_surrogate(key, field) or lone_surrogate(item, f"{field}.{key}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = lone_surrogate(item, f"{field}[{i}]")
            if found:
                return found
    return None


def _strings(value: Any, out: list[str]) -> list[str]:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _strings(key, out)
            _strings(item, out)
    elif isinstance(value, list | tuple):
        for item in value:
            _strings(item, out)
    return out


def check_text(value: Any, where: Where, field: str) -> None:
    """Raise DataError naming the field if ``value`` holds a lone surrogate."""
    # One regex pass over all the strings; the walk that names the field only runs when one is found.
    if not _SURROGATE.search("".join(_strings(value, []))):
        return
    found = lone_surrogate(value, field)
    if found:
        name, offset, char = found
        msg = f"holds a lone surrogate (\\u{ord(char):04x} at offset {offset}), not text: fix its escape"
        raise fail(where, name, msg, "lone surrogate")


def check_example_text(example: QAExample, where: Where) -> None:
    """Raise DataError naming the row and field if any string of the example holds a lone surrogate."""
    fields = [example.question, example.answers, example.id, example.metadata]
    for c in example.candidates:
        fields += [c.text, c.title, c.id, c.metadata]
    if not _SURROGATE.search("".join(_strings(fields, []))):
        return
    check_text(example.question, where, "question")
    check_text(example.answers, where, "answers")
    check_text(example.id, where, "id")
    for i, c in enumerate(example.candidates):
        for name, value in (("text", c.text), ("title", c.title), ("id", c.id), ("metadata", c.metadata)):
            check_text(value, where, f"candidates[{i}].{name}")
    check_text(example.metadata, where, "metadata")


def as_metadata(value: Any, where: Where, field: str, encoded: bool) -> dict[str, Any]:
    """An optional metadata object."""
    if encoded:
        value = decode_json_cell(value, where, field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(where, field, f"expected an object, got {type_name(value)}", "bad metadata")
    return dict(value)


# ----------------------------------------------------------------------------- reading rows


def container_of(path: str | Path) -> Container:
    """The container implied by the file extension (a trailing ``.gz`` is looked through)."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in _EXTENSIONS:
        raise DataError(
            f"cannot tell the container from the extension {ext or '(none)'!r}; "
            "use .jsonl, .json, .csv, .tsv or .parquet",
            path=str(path),
            reason="unknown format",
        )
    return _EXTENSIONS[ext]


def read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed if it ends in .gz, without a UTF-8 byte-order mark."""
    with _gzip_errors(path), _open_binary(path) as fh:
        data = fh.read()
    # A UTF-8 byte-order mark (Excel writes one) is not content.
    return data.removeprefix(b"\xef\xbb\xbf")


def _utf8_error(where: Where, exc: UnicodeDecodeError, column_base: int = 0) -> DataError:
    byte = exc.object[exc.start : exc.start + 1].hex()
    return fail(
        where, None, f"not valid UTF-8 (byte 0x{byte} at offset {column_base + exc.start})", "not UTF-8"
    )


def _jsonl_rows(path: str, data: bytes, strings: bool = False) -> Iterator[Row]:
    # Split at \n only: U+2028 and friends may occur inside JSON strings (str.splitlines would cut there).
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = (path, number)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, _utf8_error(where, exc)
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield (
                number,
                fail(where, None, f"malformed JSON: {exc.msg} (column {exc.colno})", "malformed JSON"),
            )
            continue
        if not isinstance(value, dict) and not (strings and isinstance(value, str)):
            yield (
                number,
                fail(where, None, f"expected a JSON object, got {type_name(value)}", "not an object"),
            )
            continue
        yield number, value


def _json_array_rows(path: str, data: bytes, strings: bool = False) -> Iterator[Row]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _utf8_error((path, line), exc) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail((path, exc.lineno), None, f"malformed JSON: {exc.msg}", "malformed JSON") from None
    if not isinstance(value, list):
        raise fail(
            (path, 1), None, f"expected a JSON array of objects, got {type_name(value)}", "not an array"
        )
    for number, item in enumerate(value, start=1):
        if isinstance(item, dict) or (strings and isinstance(item, str)):
            yield number, item
        else:
            yield (
                number,
                fail((path, number), None, f"expected an object, got {type_name(item)}", "not an object"),
            )


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _has_surrogates(text: str) -> bool:
    # Undecodable bytes were mapped to lone surrogates by errors="surrogateescape".
    return _ESCAPED_BYTE.search(text) is not None


def _csv_rows(path: str, data: bytes, delimiter: str, *, empty_as_none: bool = True) -> list[Row]:
    # A cell of JSON-encoded candidates easily exceeds csv's default 128 KiB field limit.
    limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)
    try:
        text = data.decode("utf-8", errors="surrogateescape")
        return _CsvRecords(path, text, delimiter).rows(empty_as_none)
    finally:
        csv.field_size_limit(limit)


class _Lines:
    """The physical lines of a CSV text, fed one at a time to csv.reader, with a position to move back."""

    def __init__(self, text: str) -> None:
        # newline="": split at \n, \r\n and \r as csv expects, endings kept (U+2028 is no line end).
        self.lines = io.StringIO(text, newline="").readlines()
        self.pos = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_LINE_END = re.compile(r"\r\n|\r|\n")


def _cell_kind(cell: str) -> str:
    """A coarse shape of a cell, to tell a row of this file from a line of prose."""
    value = cell.strip().strip('"').strip()
    if not value:
        return "empty"
    if value[0] in "[{":
        return "json"
    if _NUMBER.fullmatch(value):
        return "number"
    if any(ch.isspace() for ch in value):
        # Prose keeps its final punctuation: questions end in "?", paragraphs in ".", fragments in neither.
        return "text" + (value[-1] if value[-1] in "?.!:;" else "")
    # A word keeps its shape (digit runs -> 9, letter runs -> a): ids like "d42" and "d7" both read "a9".
    return "word:" + re.sub(r"[^\W\d_]+", "a", re.sub(r"\d+", "9", value))


def _fits(kind: str, seen: set[str]) -> bool:
    # A column that holds prose also holds single words and numbers.
    prose = any(k.startswith("text") for k in seen)
    return kind in seen or (prose and kind.startswith(("word:", "number")))


class _CsvRecords:
    """CSV records, each with the physical line it starts on, refusing any that may have swallowed rows.

    A quote left open in one row makes csv read the following rows as the rest of one cell. Three
    checks keep such rows from vanishing: parsing is strict (a closing quote must end its cell, and
    the file must not end inside one); a record that spans several lines is refused when every one of
    those lines reads on its own as a row of this file (the header's field count, each cell shaped like
    that column's cells in the file's one-line records); and after a bad record, reading resumes on the
    line after the one it started on, so the rows it took are read as rows (kept with skip_invalid).
    """

    def __init__(self, path: str, text: str, delimiter: str) -> None:
        self.path = path
        self.delimiter = delimiter
        self.source = _Lines(text)
        self.header: list[str] = []
        self.kinds: list[set[str]] = []

    def _reader(self) -> Iterator[list[str]]:
        return csv.reader(self.source, delimiter=self.delimiter, strict=True)

    def rows(self, empty_as_none: bool) -> list[Row]:
        """Every record after the header as ``(line, {column: cell} | DataError)``."""
        try:
            header = next(self._reader(), None)
        except csv.Error as exc:
            raise fail((self.path, 1), None, f"malformed CSV header: {exc}", "malformed CSV") from None
        if header is None:
            return []
        if any(_has_surrogates(h) for h in header):
            raise fail((self.path, 1), None, "not valid UTF-8 in the header", "not UTF-8")
        self.header = [h.strip() for h in header]
        body = self.source.pos
        records = list(self._records(body, check=False))
        one_line = [cells for start, end, cells in records if end - start == 1 and isinstance(cells, list)]
        if len(one_line) < sum(isinstance(cells, list) for _, _, cells in records):
            # Multi-line records: learn how the file's one-line records look, column by column, and read
            # again checking that none of them swallowed rows.
            self.kinds = [set() for _ in self.header]
            for cells in one_line:
                for kinds, cell in zip(self.kinds, cells, strict=True):
                    kinds.add(_cell_kind(cell))
            records = list(self._records(body, check=True))
        rows: list[Row] = []
        for start, _, cells in records:
            if isinstance(cells, DataError):
                rows.append((start + 1, cells))
            elif any(_has_surrogates(c) for c in cells):
                rows.append((start + 1, fail((self.path, start + 1), None, "not valid UTF-8", "not UTF-8")))
            else:
                # An empty cell means "absent", like a JSON null.
                empty = None if empty_as_none else ""
                rows.append((start + 1, {h: c or empty for h, c in zip(self.header, cells, strict=True)}))
        return rows

    def _records(self, body: int, check: bool) -> Iterator[tuple[int, int, list[str] | DataError]]:
        """``(first line, line after the last, cells or the error)`` per record, 0-based lines."""
        self.source.pos = body
        reader = self._reader()
        while True:
            start = self.source.pos
            try:
                cells = next(reader, None)
            except csv.Error as exc:
                cells = self._broken(start, exc)
            if cells is None:
                return
            end = self.source.pos
            if isinstance(cells, list):
                if not cells or all(not c.strip() for c in cells):
                    continue
                cells = self._check(start, end, cells, check)
            yield start, end, cells
            if isinstance(cells, DataError) and end - start > 1:
                # Resume right after the line it started on: what it took are rows of their own.
                self.source.pos = start + 1
                reader = self._reader()

    def _broken(self, start: int, exc: csv.Error) -> DataError:
        if "unexpected end of data" in str(exc):
            msg = "a quoted cell opened on this line is never closed (the file ends inside it)"
        else:
            msg = f"malformed CSV: {exc} (on line {self.source.pos}; a quote left open on this line?)"
        return fail((self.path, start + 1), None, msg, "malformed CSV")

    def _check(self, start: int, end: int, cells: list[str], check: bool) -> list[str] | DataError:
        where = (self.path, start + 1)
        if len(cells) != len(self.header):
            msg = f"expected {len(self.header)} columns, got {len(cells)}"
            if end - start > 1:
                msg += f" (the record runs to line {end}: a quote left open?)"
            return fail(where, None, msg, "malformed CSV")
        if check and end - start > 1 and self._swallows(start, end, cells):
            msg = (
                f"a quoted cell opened on this line runs to line {end}, and each of those lines reads "
                "as a row of its own: a quote left open? (if the cell really spans those lines, "
                "write the data as JSON Lines or Parquet)"
            )
            return fail(where, None, msg, "malformed CSV")
        return cells

    def _swallows(self, start: int, end: int, cells: list[str]) -> bool:
        """Whether each line of a multi-line record reads as a row if its opening quote were a stray one."""
        if len(self.header) < 2 or not any(self.kinds):
            return False  # nothing to tell a row from a line of prose by
        opened = next((i for i, c in enumerate(cells) if _LINE_END.search(c)), None)
        if opened is None:
            return False
        # The first line, read with that quote as a plain character: the cells before it, then the
        # rest of the line split at the delimiter (strict parsing left no lone quote in it).
        first = [*cells[:opened], *_LINE_END.split(cells[opened], maxsplit=1)[0].split(self.delimiter)]
        lines = [first]
        for raw in self.source.lines[start + 1 : end]:
            lines.append(next(csv.reader([raw], delimiter=self.delimiter), []))
        return all(self._reads_as_row(line) for line in lines)

    def _reads_as_row(self, cells: list[str]) -> bool:
        return len(cells) == len(self.header) and all(
            _fits(_cell_kind(c), kinds) for c, kinds in zip(cells, self.kinds, strict=True)
        )


def _parquet_rows(path: str, file: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(file).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise fail((path, 0), None, f"not a readable Parquet file: {exc}", "unreadable file") from None
    yield from enumerate(records, start=1)


def read_rows(path: str | Path, *, raw: bool = False) -> tuple[list[Row], bool]:
    """All rows of a file as ``(line, dict | DataError)``, and whether cells may hold JSON strings.

    File-level problems (unreadable Parquet, a broken JSON array) raise DataError; row-level problems
    are returned in place of the row so that callers can skip them and go on. ``raw``: rows as the
    user wrote them, for documents: a JSON string is a row too, and an empty CSV cell stays "".
    """
    p = Path(path)
    container = container_of(p)
    if container == "parquet":
        return list(_parquet_rows(str(path), p)), True
    return rows_of_bytes(str(path), read_bytes(p), container, raw=raw)


def rows_of_bytes(
    name: str, data: bytes, container: Container, *, raw: bool = False
) -> tuple[list[Row], bool]:
    """:func:`read_rows` for bytes already read (a text container; ``name`` is used in errors)."""
    if container in ("csv", "tsv"):
        delimiter = "," if container == "csv" else "\t"
        return _csv_rows(name, data, delimiter, empty_as_none=not raw), True
    if container == "json" and data.lstrip()[:1] == b"[":
        return list(_json_array_rows(name, data, strings=raw)), False
    # A .json file that is not an array is read as JSON Lines (MuSiQue ships JSONL named either way).
    return list(_jsonl_rows(name, data, strings=raw)), False


def peek_row(path: str | Path) -> tuple[int, dict[str, Any]] | None:
    """The first well-formed row and its line (None if there is none), reading as little as possible.

    Cells are as stored: JSON strings in CSV/Parquet cells are not decoded.
    """
    p = Path(path)
    container = container_of(p)
    if container == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(p).iter_batches(batch_size=1):
                records = batch.to_pylist()
                if records:
                    return 1, records[0]
        except (pa.ArrowException, OSError):
            return None  # read_rows reports it
        return None
    with _gzip_errors(p), _open_text(p) as fh:
        if container in ("csv", "tsv"):
            reader = csv.DictReader(fh, delimiter="," if container == "csv" else "\t")
            try:
                first = next(reader, None)
            except csv.Error:
                return None
            if first is None:
                return None
            return reader.line_num, {k.strip(): v for k, v in first.items() if isinstance(k, str)}
        if container == "json":
            first = _peek_json_array(fh)
            if first is not None:
                return 1, first
            fh.seek(0)
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    return number, value
    return None


@contextlib.contextmanager
def _gzip_errors(p: Path) -> Iterator[None]:
    """A broken .gz file (truncated, corrupt, or not gzip at all) as a DataError naming it."""
    if p.suffix.lower() != ".gz":
        yield
        return
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        msg = f"not a readable gzip file ({exc or type(exc).__name__})"
        raise DataError(msg, path=str(p), reason="unreadable file") from None


def _open_binary(p: Path) -> BinaryIO:
    return gzip.open(p, "rb") if p.suffix.lower() == ".gz" else p.open("rb")


def _open_text(p: Path) -> io.TextIOWrapper:
    return io.TextIOWrapper(_open_binary(p), encoding="utf-8-sig", errors="replace", newline="")


def _peek_json_array(fh: io.TextIOWrapper) -> dict[str, Any] | None:
    """The first object of a JSON array without parsing the whole (possibly huge) file."""
    decoder = json.JSONDecoder()
    size = 1 << 16
    buf = fh.read(size)
    if not buf.lstrip().startswith("["):
        return None
    while True:
        body = buf.lstrip()[1:].lstrip()
        try:
            value, _ = decoder.raw_decode(body)
            return value if isinstance(value, dict) else None
        except json.JSONDecodeError:
            more = fh.read(size)
            if not more:
                return None
            buf += more
            size *= 2


# ----------------------------------------------------------------------------- parsing a QA log row


def parse_candidate(value: Any, where: Where, field: str, encoded: bool) -> tuple[Candidate, bool | None]:
    """One candidate (a string, or an object with ``text``) and its per-candidate gold flag, if any.

    ``field`` prefixes sub-field names in errors ("candidates[3]" -> "candidates[3].text"); "" for none.
    """

    def sub(name: str) -> str:
        return f"{field}.{name}" if field else name

    if isinstance(value, str):
        check_text(value, where, field or "text")
        return Candidate(text=value), None
    if not isinstance(value, dict):
        msg = f"expected a string or an object with 'text', got {type_name(value)}"
        raise fail(where, field or None, msg, "bad candidates")
    if value.get("text") is None:
        raise fail(where, sub("text"), "missing: every candidate needs a text", "candidate without text")
    text = as_text(value["text"], where, sub("text"), "candidate text")
    title = value.get("title")
    if title is not None and not isinstance(title, str):
        raise fail(where, sub("title"), f"expected a string, got {type_name(title)}", "bad candidates")
    flag = value.get("gold")
    if flag is not None and not isinstance(flag, bool):
        raise fail(where, sub("gold"), f"expected true or false, got {type_name(flag)}", "bad gold")
    # Keys a retriever adds (score, url, ...) are kept as metadata rather than dropped.
    extras = {
        k: v for k, v in value.items() if k not in _CANDIDATE_KEYS and v is not None and not is_index(k)
    }
    metadata = {**extras, **as_metadata(value.get("metadata"), where, sub("metadata"), encoded)}
    candidate = Candidate(
        text=text, id=as_id(value.get("id"), where, sub("id")), title=title, metadata=metadata
    )
    check_text(candidate.text, where, sub("text"))
    check_text(candidate.title, where, sub("title"))
    check_text(candidate.metadata, where, sub("metadata"))
    return candidate, flag


def answer_list(value: Any, where: Where, key: str) -> list[str]:
    """A string or a non-empty list of non-empty strings, as a list."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        items = value
    else:
        if isinstance(value, list):
            bad = [a for a in value if not isinstance(a, str)]
            got = (
                f"a list containing {type_name(bad[0])}" if bad else "an empty list (only rows with gold may)"
            )
        else:
            got = type_name(value)
        raise fail(where, key, f"expected a string or a list of strings, got {got}", "bad answer")
    if any(not a.strip() for a in items):
        raise fail(where, key, "contains an empty answer", "bad answer")
    return items


def parse_answers(row: dict[str, Any], where: Where, encoded: bool, *, labelled: bool = False) -> list[str]:
    """``answer`` (a string or list of strings) and/or ``answers``; ``answer`` comes first.

    ``labelled``: the row has gold labels, so ``"answers": []`` is allowed (a retrieval-only row, as
    mined from a BEIR folder: good for ranking metrics and supervised training) and gives ``[]``.
    """
    answers: list[str] = []
    empty = False
    for key in ("answer", "answers"):
        value = row.get(key)
        if value is None:
            continue
        if encoded and key == "answers" and isinstance(value, str):
            try:
                decoded = json.loads(value)
            except json.JSONDecodeError:
                decoded = None
            # Only a JSON list counts as encoded; any other cell text is itself the answer.
            value = decoded if isinstance(decoded, list) else value
        if key == "answers" and value == [] and labelled:
            empty = True
            continue
        answers.extend(a for a in answer_list(value, where, key) if a not in answers)
    if not answers and not empty:
        raise fail(where, "answer", "missing (give 'answer' or 'answers')", "missing answer")
    return answers


def _labelled(row: dict[str, Any], candidates: Any) -> bool:
    flags = isinstance(candidates, list) and any(
        isinstance(c, dict) and c.get("gold") is not None for c in candidates
    )
    return row.get("gold") is not None or flags


def resolve_gold(
    raw: Any, flags: Sequence[bool | None], candidates: Sequence[Candidate], where: Where, encoded: bool
) -> list[int] | None:
    """Gold indices from ``gold`` (indices or candidate ids) and per-candidate flags, or None if unlabelled.

    Candidates with identical content are duplicates of one document, so gold spreads to every copy.
    """
    if encoded and isinstance(raw, str):
        # A cell that is not JSON is a bare candidate id.
        with contextlib.suppress(json.JSONDecodeError):
            raw = json.loads(raw)
    if raw is None and all(f is None for f in flags):
        return None
    items = [] if raw is None else raw if isinstance(raw, list) else [raw]
    gold: set[int] = {i for i, f in enumerate(flags) if f}
    ids: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        if c.id is not None:
            ids.setdefault(c.id, []).append(i)
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(candidates):
                msg = f"index {item} out of range for {len(candidates)} candidates"
                raise fail(where, "gold", msg, "gold out of range")
            gold.add(item)
        elif isinstance(item, str):
            if item not in ids:
                raise fail(where, "gold", f"id {item!r} matches no candidate id", "unknown gold id")
            gold.update(ids[item])
        else:
            msg = f"expected candidate indices or ids, got {type_name(item)}"
            raise fail(where, "gold", msg, "bad gold")
    contents = {candidates[i].content for i in gold}
    return sorted(i for i, c in enumerate(candidates) if i in gold or c.content in contents)


def is_index(key: str) -> bool:
    """Whether a column is the row index pandas stored as an extra Parquet column (not the user's data)."""
    return key.startswith("__index_level_")


def parse_qalog_row(row: dict[str, Any], where: Where, encoded: bool = False) -> QAExample:
    """One QA-log row -> QAExample; raises DataError naming the field at fault."""
    question = as_text(row.get("question"), where, "question", "question", empty_ok=False)
    raw_candidates = row.get("candidates")
    if encoded:
        raw_candidates = decode_json_cell(raw_candidates, where, "candidates")
    answers = parse_answers(row, where, encoded, labelled=_labelled(row, raw_candidates))
    if raw_candidates is None:
        raw_candidates = []
    if not isinstance(raw_candidates, list):
        msg = f"expected a list of strings or objects, got {type_name(raw_candidates)}"
        raise fail(where, "candidates", msg, "bad candidates")
    parsed = [parse_candidate(c, where, f"candidates[{i}]", encoded) for i, c in enumerate(raw_candidates)]
    candidates = [c for c, _ in parsed]
    gold = resolve_gold(row.get("gold"), [f for _, f in parsed], candidates, where, encoded)
    extras = {k: v for k, v in row.items() if k not in _QALOG_KEYS and v is not None and not is_index(k)}
    metadata = {**extras, **as_metadata(row.get("metadata"), where, "metadata", encoded)}
    return QAExample(
        question=question,
        answers=answers,
        candidates=candidates,
        gold=gold,
        id=as_id(row.get("id"), where, "id"),
        source=f"{where[0]}:{where[1]}",
        metadata=metadata,
    )


# ----------------------------------------------------------------------------- feedback


@dataclasses.dataclass(frozen=True)
class Feedback:
    """A feedback record of a captured log: a corrected answer and/or a rating for the row of ``run_id``."""

    run_id: str
    answer: str | None
    rating: float | None
    timestamp: str | None
    where: Where
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def is_feedback_row(row: dict[str, Any]) -> bool:
    """Whether a row is a feedback record (``{"feedback": {...}}``, no question of its own)."""
    return FEEDBACK_KEY in row and row.get("question") is None and row[FEEDBACK_KEY] is not None


def parse_feedback_row(row: dict[str, Any], where: Where, encoded: bool = False) -> Feedback:
    """One feedback record; raises DataError naming the field at fault."""
    value = decode_json_cell(row[FEEDBACK_KEY], where, FEEDBACK_KEY) if encoded else row[FEEDBACK_KEY]
    if not isinstance(value, dict):
        raise fail(where, FEEDBACK_KEY, f"expected an object, got {type_name(value)}", "bad feedback")
    run_id = as_id(value.get(RUN_ID_KEY), where, f"{FEEDBACK_KEY}.{RUN_ID_KEY}")
    if run_id is None:
        raise fail(where, f"{FEEDBACK_KEY}.{RUN_ID_KEY}", "missing: feedback names its row", "bad feedback")
    answer = value.get("answer")
    if answer is not None:
        answer = as_text(answer, where, f"{FEEDBACK_KEY}.answer", "feedback answer", empty_ok=False)
    rating = value.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, int | float) or not math.isfinite(rating):
            msg = f"expected a finite number, got {rating!r}"
            raise fail(where, f"{FEEDBACK_KEY}.rating", msg, "bad feedback")
        rating = float(rating)
    if answer is None and rating is None:
        raise fail(where, FEEDBACK_KEY, "holds neither an answer nor a rating", "bad feedback")
    timestamp = value.get(TIMESTAMP_KEY)
    if timestamp is not None and not isinstance(timestamp, str):
        msg = f"expected an ISO 8601 string, got {type_name(timestamp)}"
        raise fail(where, f"{FEEDBACK_KEY}.{TIMESTAMP_KEY}", msg, "bad feedback")
    metadata = as_metadata(value.get("metadata"), where, f"{FEEDBACK_KEY}.metadata", False)
    check_text([answer, metadata], where, FEEDBACK_KEY)
    return Feedback(run_id, answer, rating, timestamp, where, metadata)


def _when(feedback: Feedback) -> _dt.datetime:
    # Records without a (readable) timestamp sort first; ties keep the order they were read in.
    try:
        when = _dt.datetime.fromisoformat(feedback.timestamp or "")
    except ValueError:
        return _dt.datetime.min.replace(tzinfo=_dt.UTC)
    return when if when.tzinfo else when.replace(tzinfo=_dt.UTC)


def join_feedback(
    examples: Sequence[QAExample], feedback: Sequence[Feedback], summary: LoadSummary
) -> list[QAExample]:
    """The examples with their feedback joined: the latest record wins, field by field.

    A row is matched by its ``metadata["run_id"]`` (its ``id`` when it has none). A corrected answer
    becomes the row's answer (the logged answers move to ``metadata["logged_answers"]``); answer, rating
    and time go to ``metadata["feedback"]``. Feedback matching no row is counted in ``summary``
    ("feedback without its row": load every rotated file of a log together).
    """
    if not feedback:
        return list(examples)
    merged: dict[str, dict[str, Any]] = {}
    last: dict[str, Feedback] = {}
    for record in sorted(feedback, key=_when):  # stable: equal times keep the reading order
        into = merged.setdefault(record.run_id, {})
        if record.answer is not None:
            into["answer"] = record.answer
        if record.rating is not None:
            into["rating"] = record.rating
        if record.timestamp is not None:
            into[TIMESTAMP_KEY] = record.timestamp
        if record.metadata:
            into["metadata"] = {**into.get("metadata", {}), **record.metadata}
        last[record.run_id] = record
    out: list[QAExample] = []
    matched: set[str] = set()
    for ex in examples:
        key = ex.metadata.get(RUN_ID_KEY, ex.id)
        joined = merged.get(key) if isinstance(key, str) else None
        if joined is None:
            out.append(ex)
            continue
        matched.add(key)
        metadata = {**ex.metadata, FEEDBACK_KEY: dict(joined)}
        answers = ex.answers
        corrected = joined.get("answer")
        if corrected is not None and answers[:1] != [corrected]:
            metadata[LOGGED_ANSWERS_KEY] = list(ex.answers)
            answers = [corrected]
        out.append(dataclasses.replace(ex, answers=answers, metadata=metadata))
    for run_id in merged:
        if run_id not in matched:
            path, line = last[run_id].where
            message = (
                f"{path}:{line}: feedback for run {run_id!r} matches no row of the files loaded "
                "(load every file of the log together: the rotated ones too)"
            )
            summary.skip(path, line, "feedback without its row", message)
    return out


def rating_of(example: QAExample) -> float | None:
    """The rating joined onto a captured row, or None."""
    feedback = example.metadata.get(FEEDBACK_KEY)
    rating = feedback.get("rating") if isinstance(feedback, dict) else None
    return float(rating) if isinstance(rating, int | float) and not isinstance(rating, bool) else None


def filter_rated(examples: Sequence[QAExample], min_rating: float) -> tuple[list[QAExample], LoadSummary]:
    """Keep the rows whose feedback rated them at least ``min_rating``; rows never rated are left out."""
    if (
        isinstance(min_rating, bool)
        or not isinstance(min_rating, int | float)
        or not math.isfinite(min_rating)
    ):
        raise ValueError(f"min_rating must be a finite number, got {min_rating!r}")
    kept: list[QAExample] = []
    summary = LoadSummary()
    for position, ex in enumerate(examples):
        rating = rating_of(ex)
        if rating is not None and rating >= min_rating:
            kept.append(ex)
            continue
        where = ex.source or ex.id or f"example {position + 1}"
        path, _, line = where.rpartition(":") if ex.source else (where, "", "0")
        reason = "not rated" if rating is None else f"rated below {min_rating:g}"
        summary.skip(path, int(line) if line.isdigit() else 0, reason, f"{where}: {reason}")
    summary.loaded = len(kept)
    return kept, summary


# ----------------------------------------------------------------------------- writing


def _candidate_record(c: Candidate) -> dict[str, Any]:
    record: dict[str, Any] = {"text": c.text}
    if c.id is not None:
        record["id"] = c.id
    if c.title is not None:
        record["title"] = c.title
    if c.metadata:
        record["metadata"] = c.metadata
    return record


def example_record(ex: QAExample) -> dict[str, Any]:
    """The JSON object written for one example (absent values are left out)."""
    record: dict[str, Any] = {}
    if ex.id is not None:
        record["id"] = ex.id
    record["question"] = ex.question
    record["answers"] = list(ex.answers)
    record["candidates"] = [_candidate_record(c) for c in ex.candidates]
    if ex.gold is not None:
        record["gold"] = list(ex.gold)
    if ex.metadata:
        record["metadata"] = ex.metadata
    return record


def _dumps(value: Any) -> str:
    # Metadata that came through pandas holds datetimes, Decimals and numpy values: made JSON-safe.
    return json.dumps(json_safe(value), ensure_ascii=False)


def _table_cells(ex: QAExample) -> dict[str, Any]:
    return {
        "id": ex.id,
        "question": ex.question,
        "answers": list(ex.answers),
        "candidates": [
            {
                "text": c.text,
                "id": c.id,
                "title": c.title,
                "metadata": _dumps(c.metadata) if c.metadata else None,
            }
            for c in ex.candidates
        ],
        "gold": None if ex.gold is None else list(ex.gold),
        "metadata": _dumps(ex.metadata) if ex.metadata else None,
    }


def _parquet_table(examples: Iterable[QAExample]) -> Any:
    import pyarrow as pa

    # An explicit schema: inference fails on all-null columns and would turn metadata into structs
    # whose union of keys breaks round-trips, so metadata travels as JSON text.
    candidate = pa.struct(
        [("text", pa.string()), ("id", pa.string()), ("title", pa.string()), ("metadata", pa.string())]
    )
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("question", pa.string()),
            ("answers", pa.list_(pa.string())),
            ("candidates", pa.list_(candidate)),
            ("gold", pa.list_(pa.int64())),
            ("metadata", pa.string()),
        ]
    )
    return pa.Table.from_pylist([_table_cells(ex) for ex in examples], schema=schema)


def _write_csv(examples: Iterable[QAExample], fh: io.TextIOWrapper, delimiter: str) -> None:
    # QUOTE_ALL: with minimal quoting a lone "\r" in a cell is written bare and splits the record.
    writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["id", "question", "answers", "candidates", "gold", "metadata"])
    for ex in examples:
        writer.writerow(
            [
                "" if ex.id is None else ex.id,
                ex.question,
                _dumps(list(ex.answers)),
                _dumps([_candidate_record(c) for c in ex.candidates]),
                "" if ex.gold is None else _dumps(ex.gold),
                _dumps(ex.metadata) if ex.metadata else "",
            ]
        )


def _check_writable(examples: Sequence[QAExample], path: Path) -> None:
    for i, ex in enumerate(examples, start=1):
        try:
            check_example_text(ex, (ex.source or f"example {i}", 0))
        except DataError as err:
            origin = ex.source or ex.id or "no source"
            msg = f"cannot write example {i} ({origin}): field '{err.field}' {err.message}"
            raise DataError(msg, path=str(path), reason=err.reason) from None


def write_qalog(examples: Iterable[QAExample], path: str | Path) -> None:
    """Write examples as a QA log; the extension picks JSONL (.jsonl), JSON array, CSV, TSV or Parquet.

    Written whole or not at all (:func:`~gumbel_rag.data.files.atomic_write`): a failure half-way
    leaves the previous file as it was. Metadata values are made JSON-safe first (datetimes and
    Decimals as text or numbers, numpy values as numbers); a lone surrogate is refused before writing.
    """
    p = Path(path)
    container = container_of(p)
    examples = list(examples)
    _check_writable(examples, p)
    if container == "parquet":
        import pyarrow.parquet as pq

        table = _parquet_table(examples)
        with atomic_write(p, "wb") as raw:
            pq.write_table(table, raw)
        return
    with atomic_write(p, "wb") as raw:
        gz = (
            gzip.GzipFile(filename=p.stem, fileobj=raw, mode="wb", mtime=0)
            if p.suffix.lower() == ".gz"
            else None
        )
        fh = io.TextIOWrapper(gz or raw, encoding="utf-8", newline="")
        if container in ("csv", "tsv"):
            _write_csv(examples, fh, "," if container == "csv" else "\t")
        elif container == "json":
            fh.write("[\n" + ",\n".join(_dumps(example_record(ex)) for ex in examples) + "\n]\n")
        else:
            for ex in examples:
                fh.write(_dumps(example_record(ex)) + "\n")
        # Detached, not closed: atomic_write syncs and closes the file itself.
        fh.flush()
        fh.detach()
        if gz is not None:
            gz.close()
