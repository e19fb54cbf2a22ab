"""Data-parallel training on CPU: 2 processes (gloo) equal one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from gumbel_rag import GumbelReranker

WORKER = Path(__file__).with_name("distributed_train.py")


def _run(args: list[str], env_extra: dict[str, str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env_extra}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def test_two_processes_match_one_with_the_same_global_batch(
    dropout_free_bi_encoder_dir: Path, tiny_reader_dir: Path, tmp_path: Path
) -> None:
    common = [str(dropout_free_bi_encoder_dir), str(tiny_reader_dir)]
    _run([sys.executable, str(WORKER), *common, str(tmp_path / "one"), "4"], {})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", "29517"]
    _run([*torchrun, str(WORKER), *common, str(tmp_path / "two"), "2"], {"ACCELERATE_USE_CPU": "true"})

    single = load_file(str(tmp_path / "one" / "rank0-steps4.safetensors"))
    rank0 = load_file(str(tmp_path / "two" / "rank0-steps4.safetensors"))
    rank1 = load_file(str(tmp_path / "two" / "rank1-steps4.safetensors"))
    start = GumbelReranker.from_pretrained(dropout_free_bi_encoder_dir).state_dict()
    # DDP keeps the replicas identical.
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # Training moved the weights, and the 2-process run lands where the 1-process run does
    # (float32 all-reduce of two half-batch means vs one mean: tolerance 1e-5, measured ~6e-7).
    assert max((single[k] - start[k]).abs().max().item() for k in single) > 1e-4
    for key in single:
        torch.testing.assert_close(rank0[key], single[key], atol=1e-5, rtol=0)

    # The evaluation split across the 2 processes and gathered equals the single-process one.
    def dev_rows(run: str) -> list[dict]:
        lines = (tmp_path / run / "logs" / "metrics.jsonl").read_text().splitlines()
        return [row for row in map(json.loads, lines) if row["split"] == "dev"]

    one, two = dev_rows("one"), dev_rows("two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 2, 4]
    assert one[0] == two[0] and one[0]["n"] == 7
    share0 = json.loads((tmp_path / "two" / "rank0-ranked.json").read_text())
    share1 = json.loads((tmp_path / "two" / "rank1-ranked.json").read_text())
    assert json.loads((tmp_path / "one" / "rank0-ranked.json").read_text()) == [7, 7, 7]
    assert share0 == [4, 4, 4] and share1 == [3, 3, 3]
    # Every rank wrote its own noise state into the shared checkpoint.
    ckpt = tmp_path / "two" / "checkpoints" / "step-4"
    assert (ckpt / "noise_rng_0.safetensors").is_file() and (ckpt / "noise_rng_1.safetensors").is_file()
