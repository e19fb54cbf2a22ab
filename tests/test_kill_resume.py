"""A training run killed with SIGKILL and rerun with --resume ends with the uninterrupted weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gumbel_rag.data import generate_multihop, write_qalog


def _train_cmd(data: Path, out: Path, reranker: Path, reader: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "gumbel_rag.cli", "train", "--data", str(data), "--output", str(out),
        "--reranker", str(reranker), "--reader", str(reader), "--k", "2", "--batch-size", "1",
        "--grad-accum", "1", "--save-every", "1", "--eval-every", "1000", "--lr", "1e-3",
        "--max-document-tokens", "16", "--mixed-precision", "no", "--no-progress",
        "--validation-fraction", "0", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_then_resume_matches_uninterrupted(tiny_bi_encoder_dir, tiny_reader_dir, tmp_path) -> None:
    data = tmp_path / "train.jsonl"
    write_qalog(generate_multihop(12, seed=2, n_candidates=4), data)
    full, killed = tmp_path / "full", tmp_path / "killed"
    cmd = _train_cmd(data, full, tiny_bi_encoder_dir, tiny_reader_dir)
    done = subprocess.run(cmd, env=_env(), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(
        _train_cmd(data, killed, tiny_bi_encoder_dir, tiny_reader_dir),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    # Kill once a few checkpoints exist, i.e. mid-run (12 steps in all), possibly mid-write.
    while not (killed / "checkpoints" / "step-4").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "model.safetensors").exists(), "the run finished before the kill"

    resumed = subprocess.run(
        _train_cmd(data, killed, tiny_bi_encoder_dir, tiny_reader_dir, "--resume"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "12 steps" in resumed.stdout
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
    # The steps the killed run logged after its last checkpoint were redone, and are in the log once.
    rows = [json.loads(line) for line in (killed / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 13))
