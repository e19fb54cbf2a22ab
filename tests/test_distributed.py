"""Several processes on CPU (gloo): training, evaluation and mining equal one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from gumbel_rag import GumbelReranker, cli
from gumbel_rag.data import Candidate, QAExample, generate_multihop, write_qalog

WORKER = Path(__file__).with_name("distributed_train.py")
MINE_WORKER = Path(__file__).with_name("distributed_mine.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


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


def test_mining_split_across_two_processes_writes_the_one_process_file(
    dropout_free_bi_encoder_dir: Path, tmp_path: Path
) -> None:
    generated = generate_multihop(12, seed=3, n_candidates=4)
    texts = sorted({c.text for ex in generated for c in ex.candidates})
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "id": f"d{i}"}) + "\n" for i, t in enumerate(texts)))
    # 11 questions to mine and, in the middle, one row that already has candidates (left alone), so
    # the shares (6 + 5 questions) must be put back around it in the original order.
    rows = [QAExample(ex.question, ex.answers, id=ex.id) for ex in generated]
    rows[4] = QAExample(rows[4].question, rows[4].answers, [Candidate("kept as it was")], id="has")
    write_qalog(rows, tmp_path / "log.jsonl")

    one, two = tmp_path / "one", tmp_path / "two"
    two.mkdir()
    data = ["--data", str(tmp_path / "log.jsonl"), "--corpus", str(corpus), "--top-n", "3"]
    # The one-process reference: the same command, run here without a launcher.
    assert cli.main(["mine", *data, "--output", str(one / "bm25.jsonl")]) == 0
    dense = ["--retriever", "dense", "--encoder", str(dropout_free_bi_encoder_dir)]
    assert cli.main(["mine", *data, *dense, "--output", str(one / "dense.jsonl")]) == 0
    args = [str(tmp_path / "log.jsonl"), str(corpus), str(dropout_free_bi_encoder_dir), str(two)]
    _run([*TORCHRUN, "--master_port", "29518", str(MINE_WORKER), *args], {"ACCELERATE_USE_CPU": "true"})

    # The work was split: each rank retrieved for its contiguous share of the 11 questions and, for
    # dense mining, embedded half of the corpus.
    n = len(texts)
    work = [json.loads((two / f"rank{r}-work.json").read_text()) for r in (0, 1)]
    assert work[0] == {"bm25_queries": [6], "encoded": [(n + 1) // 2, 6]}
    assert work[1] == {"bm25_queries": [5], "encoded": [n // 2, 5]}

    # BM25: byte for byte the one-process file (same index, same per-query scores).
    bm25_one, bm25_two = (one / "bm25.jsonl").read_bytes(), (two / "bm25.jsonl").read_bytes()
    assert bm25_one == bm25_two
    mined = [json.loads(line) for line in bm25_one.decode().splitlines()]
    assert [row["id"] for row in mined] == [ex.id for ex in rows]
    assert [len(row["candidates"]) for row in mined] == [3] * 4 + [1] + [3] * 7
    # Dense: the same documents in the same order; the scores agree to float32 rounding (each rank
    # embeds a different share of the corpus, so its length buckets pad differently; measured 6e-8).
    dense_one = [json.loads(line) for line in (one / "dense.jsonl").read_text().splitlines()]
    dense_two = [json.loads(line) for line in (two / "dense.jsonl").read_text().splitlines()]
    assert len(dense_one) == len(dense_two) == 12
    for a, b in zip(dense_one, dense_two, strict=True):
        assert [c.get("id") for c in a["candidates"]] == [c.get("id") for c in b["candidates"]]
        for ca, cb in zip(a["candidates"], b["candidates"], strict=True):
            score_a = ca.get("metadata", {}).get("retrieval_score", 0.0)
            score_b = cb.get("metadata", {}).get("retrieval_score", 0.0)
            assert abs(score_a - score_b) <= 1e-6
