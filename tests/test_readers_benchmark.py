"""benchmarks/reader_states.py runs end to end in --quick mode (tiny models built from a config).

No timing assertions (speed lives in docs/performance.md): every measurement is produced, cached batches
give the uncached loss, and the mined log really repeats documents and encodes each one once.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import reader_states  # noqa: E402


def test_reader_states_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "states.json"
    results = reader_states.main(["--quick", "--json", str(out)])
    assert out.is_file()
    assert len(results["measures"]) == 5
    for m in results["measures"]:
        for key in ("reference_s", "seconds", "speedup"):
            assert isinstance(m[key], float) and math.isfinite(m[key]) and m[key] > 0, (m["measure"], key)
    assert results["max_rel_diff_cached_vs_uncached"] < 1e-5
    assert results["cache_memory_mb"] > 0 and results["cache_disk_mb"] > 0
    mined = results["mined_log"]
    assert mined["distinct_documents"] < mined["slots"]  # documents do repeat across questions
    # Each distinct document (and the prompt prefix) was encoded once; every repeat was a hit.
    assert mined["stats"]["misses"] == mined["distinct_documents"] + 1
    assert mined["stats"]["hits"] == mined["slots"] - mined["distinct_documents"] + mined["questions"] - 1
