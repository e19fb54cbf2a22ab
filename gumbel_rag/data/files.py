"""Writing output files safely: whole or not at all, and only values JSON can hold.

Every file gumbel-rag writes for a user (QA logs, mined candidates, metrics, results) goes through
:func:`atomic_write`: the bytes go to a temporary file in the same directory, are flushed to disk, and
the temporary file is renamed over the target. A failure or a kill half-way leaves the previous file
as it was (or no file), never a truncated one that a later command would read as complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import decimal
import enum
import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text", "json_safe", "write_json"]


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; rename it over ``path`` only if the block succeeds.

    ``mode`` is ``"w"`` (text, ``newline=""`` so callers control line endings) or ``"wb"``. Parent
    directories are created. The file is fsynced before the rename, so a crash right after does not
    leave an empty file under the final name.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        text = mode == "w"
        with os.fdopen(fd, mode, encoding=encoding if text else None, newline="" if text else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; an output file should get the permissions any new file would.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


def write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Write ``value`` as indented JSON (made JSON-safe first) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(json_safe(value), indent=2, ensure_ascii=False) + "\n")


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps`` accepts and that reads back as the same data where it can.

    dicts (keys become strings), lists, tuples and sets become dicts and lists; datetimes, dates and
    times become ISO 8601 strings; Decimals become floats when exact enough, else strings; numpy and
    torch scalars and arrays become numbers and lists (via ``tolist()``); enums their value; paths and
    UUIDs strings; bytes are decoded as UTF-8 (replacing bad bytes). Non-finite floats become None,
    since JSON has no NaN. Anything else becomes its ``str()``.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [json_safe(v) for v in items]
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        as_float = float(value)
        return (
            as_float if math.isfinite(as_float) and decimal.Decimal(repr(as_float)) == value else str(value)
        )
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, PurePath | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    tolist = getattr(value, "tolist", None)
    if callable(tolist):  # numpy arrays and scalars, torch tensors
        return json_safe(tolist())
    return str(value)
