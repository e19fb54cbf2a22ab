"""The benchmark scripts run end to end in --quick mode (tiny models built from a config).

No timing assertions: speed targets live in the benchmarks and docs/performance.md. These tests check
that every measurement is produced and that the correctness numbers the benchmarks report hold.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import inference, scaling, training_step  # noqa: E402
from benchmarks.common import interleaved, paired_ratio, peak_memory  # noqa: E402


def _positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_top_k_agreement() -> None:
    a = [[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]
    assert inference.top_k_agreement(a, a) == 1.0
    swapped = [[5.0, 4.0, 3.0, 2.0, 0.0, 1.0]]  # 6th and 5th swap: one of five differs
    assert inference.top_k_agreement(a, swapped) == pytest.approx(0.8)
    assert inference.top_k_agreement([[1.0, 2.0]], [[2.0, 1.0]], k=1) == 0.0


def test_interleaved_timing_and_paired_ratio() -> None:
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the order rotates
    assert all(len(v) == 3 for v in times.values())
    assert paired_ratio({"r": [2.0, 4.0, 9.0], "c": [1.0, 1.0, 1.0]}, "r", "c") == 4.0


def test_peak_memory_sees_a_large_allocation() -> None:
    import torch

    with peak_memory() as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del x
    if not math.isnan(mem["peak_mb"]):
        assert mem["peak_mb"] >= 60


@pytest.mark.parametrize("openvino", [True, False])
def test_inference_benchmark_quick(openvino: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if openvino:
        pytest.importorskip("openvino")
    else:
        monkeypatch.setattr(inference, "_have_openvino", lambda: False)
    out = tmp_path / "inference.json"
    models = "bi-encoder,cross-encoder" if openvino else "bi-encoder"
    results = inference.main(["--quick", "--models", models, "--json", str(out)])
    assert out.is_file()
    for kind in models.split(","):
        res = results[kind]
        assert [r["candidates"] for r in res["rows"]] == [4, 8]
        for row in res["rows"]:
            assert row["exact_max_rel_diff"] < 1e-5
            assert _positive(row["exact_speedup"])
            if openvino:
                assert row["fast_max_rel_diff"] < 1e-4 and _positive(row["fast_speedup"])
            else:
                assert "fast_speedup" not in row
        if openvino:
            assert res["fast_dev_max_rel_diff"] < 1e-4
            assert 0.0 < res["fast_top5_agreement"] <= 1.0
    cache = results["bi-encoder"]["cache"]
    assert cache["max_rel_diff_vs_stock"] < 1e-5
    assert 0 < cache["cache_bytes"] <= cache["max_bytes"]
    assert _positive(cache["cache_speedup"])


def test_training_step_benchmark_quick(tmp_path: Path) -> None:
    results = training_step.main(["--quick", "--json", str(tmp_path / "t.json")])
    rows = {r["step"]: r for r in results["rows"]}
    assert {"floor", "grerank", "single_pass", "loop"} <= set(rows)
    assert rows["floor"]["x_floor"] == 1.0
    for row in rows.values():
        assert _positive(row["seconds"]) and _positive(row["x_floor"])
        assert math.isnan(row["peak_mb"]) or row["peak_mb"] >= 0


def test_scaling_benchmark_quick(tmp_path: Path) -> None:
    png = tmp_path / "scaling.png"
    results = scaling.main(["--quick", "--png", str(png)])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["candidates"] for r in results["vs_candidates"]] == [3, 6]
    assert [r["doc_tokens"] for r in results["vs_length"]] == [16, 32]
    for row in results["vs_candidates"] + results["vs_length"]:
        assert _positive(row["grerank_s"]) and _positive(row["floor_s"])
        assert row["reader_keys"] == row["candidates"] * row["doc_tokens"]
