"""Atomic output files and JSON-safe values (gumbel_rag.data.files)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from gumbel_rag.data.files import atomic_write, atomic_write_text, json_safe, write_json


def test_atomic_write_replaces_whole_or_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "log.jsonl"
    atomic_write_text(target, "first\n")
    assert target.read_text() == "first\n"
    with pytest.raises(RuntimeError, match="half-way"), atomic_write(target) as fh:
        fh.write("partial")
        raise RuntimeError("failed half-way")
    # The failed write left the previous content and no temporary file behind.
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["log.jsonl"]
    with atomic_write(target, "wb") as fh:
        fh.write(b"second\n")
    assert target.read_bytes() == b"second\n"
    assert target.stat().st_mode & 0o777 != 0o600  # not mkstemp's private mode
    with pytest.raises(ValueError, match="mode"), atomic_write(target, "a"):
        pass


def test_json_safe_values_read_back() -> None:
    value = {
        "when": dt.datetime(2026, 12, 1, 11, 3, 4),
        "day": dt.date(2026, 12, 1),
        "price": decimal.Decimal("1.25"),
        "precise": decimal.Decimal("0.1000000000000000000001"),
        "np_float": np.float32(0.5),
        "np_int": np.int64(7),
        "array": np.arange(3),
        "tensor": torch.tensor([1.5, 2.5]),
        "nan": float("nan"),
        "path": Path("/tmp/x"),
        "id": uuid.UUID(int=1),
        "tags": {"b", "a"},
        "raw": b"caf\xc3\xa9",
        3: "int key",
        "other": object,
    }
    safe = json_safe(value)
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe
    assert safe["when"] == "2026-12-01T11:03:04" and safe["day"] == "2026-12-01"
    assert safe["price"] == 1.25 and safe["precise"] == "0.1000000000000000000001"
    assert safe["np_float"] == 0.5 and safe["np_int"] == 7 and safe["array"] == [0, 1, 2]
    assert safe["tensor"] == [1.5, 2.5] and safe["nan"] is None and safe["path"] == "/tmp/x"
    assert safe["tags"] == ["a", "b"] and safe["raw"] == "café" and safe["3"] == "int key"
    assert safe["other"] == str(object)


def test_write_json_is_atomic_and_safe(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"n": np.int32(3), "t": dt.date(2020, 1, 2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"n": 3, "t": "2020-01-02"}
