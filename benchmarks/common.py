"""Shared pieces of the benchmarks: data, tiny models for --quick, interleaved timing, peak memory."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from gumbel_rag.testing import build_tiny_bi_encoder, build_tiny_cross_encoder, build_tiny_reader

ROOT = Path(__file__).resolve().parent.parent
HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa"


# ---------------------------------------------------------------------------------------------- data


def load_hotpot(name: str = "dev_distractor_100.json") -> list[dict[str, Any]]:
    """HotpotQA rows (official JSON) from ../shared/data/hotpotqa, or [] when the data is absent."""
    path = HOTPOT / name
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf8"))


def paragraphs(row: dict[str, Any]) -> list[str]:
    """The row's candidate paragraphs as 'title: text'."""
    return [f"{title}: {''.join(sentences)}" for title, sentences in row["context"]]


def text_pool() -> str:
    """A long running text to cut documents from: every HotpotQA paragraph, else generated words."""
    rows = load_hotpot("dev_distractor_100.json") + load_hotpot("train_distractor_100.json")
    if rows:
        return " ".join(p for row in rows for p in paragraphs(row))
    rng = random.Random(0)
    words = ["alpha", "river", "museum", "born", "city", "album", "war", "film", "player", "county"]
    return " ".join(rng.choice(words) for _ in range(200_000))


class DocumentSource:
    """Documents of a given token count cut from consecutive stretches of :func:`text_pool`."""

    def __init__(self, tokenizer: Any, seed: int = 0) -> None:
        """Tokenize the pool once; documents are then decoded slices of it."""
        self.tokenizer = tokenizer
        self.ids = tokenizer(text_pool(), add_special_tokens=False, verbose=False)["input_ids"]
        self.pos = 0
        self.rng = random.Random(seed)

    def take(self, n_tokens: int) -> str:
        """The next ``n_tokens`` tokens of the pool as text (wraps around at the end)."""
        if self.pos + n_tokens > len(self.ids):
            self.pos = 0
        text = self.tokenizer.decode(self.ids[self.pos : self.pos + n_tokens])
        self.pos += n_tokens
        return text

    def mixed(self, n: int, lo: int = 20, hi: int = 400) -> list[str]:
        """``n`` documents with token counts drawn uniformly from [lo, hi]."""
        return [self.take(self.rng.randint(lo, hi)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- tiny models


def tiny_bi_encoder(directory: Path) -> Path:
    """A random 2-layer BERT bi-encoder (sentence-transformers directory) that reads 256 tokens."""
    return build_tiny_bi_encoder(directory / "tiny-bi", max_positions=512, max_seq_length=256)


def tiny_cross_encoder(directory: Path) -> Path:
    """A random 2-layer BERT sequence-classification model with one logit."""
    return build_tiny_cross_encoder(directory / "tiny-cross", max_positions=512)


def minilm_cross_encoder(directory: Path) -> Path:
    """all-MiniLM-L6-v2's encoder weights under a fresh 1-logit head (no pretrained cross-encoder ships)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from gumbel_rag.defaults import default_reranker_path

    torch.manual_seed(0)
    src = str(default_reranker_path())
    out = directory / "minilm-cross"
    BertForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(src).save_pretrained(str(out))
    return out


def tiny_reader(directory: Path) -> Path:
    """A random 2-layer Llama reader (BERT word-piece tokenizer) built from a config."""
    return build_tiny_reader(directory / "tiny-reader", max_positions=1024)


# ---------------------------------------------------------------------------------------------- timing


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, run round-robin (order rotated every round).

    The CPUs are shared with other jobs whose load drifts by 2-5x within minutes; interleaving puts the
    reference and the candidate under the same load, and :func:`paired_ratio` compares within a round.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], reference: str, candidate: str) -> float:
    """Median over rounds of reference time / candidate time (>1: the candidate is faster)."""
    return statistics.median(r / c for r, c in zip(times[reference], times[candidate], strict=True))


def median(values: list[float]) -> float:
    """The median (for readability at call sites)."""
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------- memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap_reader() -> Callable[[], int] | None:
    """Bytes currently allocated through malloc (glibc mallinfo2), or None where unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2

    def read() -> int:
        info = fn()
        return int(info.uordblks + info.hblkhd)  # in-use arena bytes + mmapped blocks (big tensors)

    return read


@contextmanager
def peak_memory() -> Iterator[dict[str, Any]]:
    """Measure peak memory allocated inside the block, above what was allocated at its start.

    GPU: ``torch.cuda.max_memory_allocated``. CPU: torch tensors come from malloc, which tracemalloc
    does not see, so a thread samples glibc's ``mallinfo2`` (live heap bytes) every 0.5 ms; a spike
    shorter than that can be missed. The result lands in the yielded dict as ``peak_mb``.
    """
    out: dict[str, Any] = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield out
        torch.cuda.synchronize()
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["method"] = "torch.cuda.max_memory_allocated"
        return
    read = _heap_reader()
    if read is None:
        yield out
        out["peak_mb"] = float("nan")
        out["method"] = "unavailable (needs glibc)"
        return
    base = read()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], read())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], read())
        out["peak_mb"] = (peak[0] - base) / 2**20
        out["method"] = "glibc mallinfo2 sampled every 0.5 ms"


# ---------------------------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including the load other jobs put on the machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    return info


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    """Write the results as JSON when a path was given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf8")
