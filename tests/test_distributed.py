"""Several processes on CPU (gloo): training, evaluation and mining equal one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gumbel_rag import GumbelReranker, cli
from gumbel_rag.data import Candidate, QAExample, generate_multihop, write_qalog

WORKER = Path(__file__).with_name("distributed_train.py")
MINE_WORKER = Path(__file__).with_name("distributed_mine.py")
SHARDED_WORKER = Path(__file__).with_name("distributed_sharded.py")
CONFIGS = Path(__file__).resolve().parent.parent / "training" / "accelerate"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def _run(args: list[str], env_extra: dict[str, str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env_extra}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def one_process_run(
    dropout_free_bi_encoder_dir: Path, tiny_reader_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The reference: the worker's training on one process with the global batch (4)."""
    out = tmp_path_factory.mktemp("distributed") / "one"
    _run(
        [sys.executable, str(WORKER), str(dropout_free_bi_encoder_dir), str(tiny_reader_dir), str(out), "4"],
        {},
    )
    return out


def _dev_rows(run: Path) -> list[dict]:
    lines = (run / "logs" / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["split"] == "dev"]


def test_two_processes_match_one_with_the_same_global_batch(
    dropout_free_bi_encoder_dir: Path, tiny_reader_dir: Path, tmp_path: Path, one_process_run: Path
) -> None:
    common = [str(dropout_free_bi_encoder_dir), str(tiny_reader_dir)]
    (tmp_path / "one").symlink_to(one_process_run)
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
        torch.testing.assert_close(rank0[key], single[key], atol=1e-5, rtol=1e-5)

    # The evaluation split across the 2 processes and gathered equals the single-process one.
    one, two = _dev_rows(tmp_path / "one"), _dev_rows(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 2, 4]
    assert one[0] == two[0] and one[0]["n"] == 7
    share0 = json.loads((tmp_path / "two" / "rank0-ranked.json").read_text())
    share1 = json.loads((tmp_path / "two" / "rank1-ranked.json").read_text())
    # Three evaluations during training, then one of the saved (half-way interpolated) model.
    assert json.loads((tmp_path / "one" / "rank0-ranked.json").read_text()) == [7, 7, 7, 7]
    assert share0 == [4, 4, 4, 4] and share1 == [3, 3, 3, 3]
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


SHARDED = [
    # (config, where its checkpoint keeps the model, whether every rank holds whole weights)
    ("fsdp.yaml", "pytorch_model_fsdp_0", False),
    ("deepspeed_zero2.yaml", "pytorch_model", True),
    ("deepspeed_zero3.yaml", "pytorch_model", False),
]


@pytest.mark.parametrize(("config", "model_state", "replicated"), SHARDED, ids=[c for c, _, _ in SHARDED])
def test_shipped_sharded_configs_train_like_one_process(
    config: str,
    model_state: str,
    replicated: bool,
    dropout_free_bi_encoder_dir: Path,
    tiny_reader_dir: Path,
    tmp_path: Path,
    one_process_run: Path,
) -> None:
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    port = str(29519 + [c for c, _, _ in SHARDED].index(config))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config)]
    # Two CPU processes instead of the file's 8 GPUs; no bf16 on CPU, so that only the split differs.
    launch += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", port]
    common = [str(dropout_free_bi_encoder_dir), str(tiny_reader_dir), str(tmp_path), "2"]
    _run([*launch, str(SHARDED_WORKER), *common], {"ACCELERATE_USE_CPU": "true"})

    # The final model is a whole sentence-transformers directory, loadable as usual, and lands where
    # the one-process run does (measured 3.6e-6 for all three; the sharded reductions sum in another
    # order than DDP's all-reduce, which gave 6e-7).
    single = load_file(str(one_process_run / "model.safetensors"))
    sharded = load_file(str(tmp_path / "model.safetensors"))
    assert sharded.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(sharded[key], single[key], atol=2e-5, rtol=1e-5)
    GumbelReranker.from_pretrained(tmp_path, device="cpu")
    # Evaluation gathered the sharded weights and still split the dev set (4 + 3 of 7 questions).
    assert _dev_rows(tmp_path) == _dev_rows(one_process_run)
    # Where every rank holds whole weights (ZeRO-2) the interpolated model is evaluated once more;
    # under FSDP / ZeRO-3 interpolation happens on the gathered copy at saving, so it is not.
    evaluations = 4 if replicated else 3
    assert json.loads((tmp_path / "rank0-ranked.json").read_text()) == [4] * evaluations
    assert json.loads((tmp_path / "rank1-ranked.json").read_text()) == [3] * evaluations
    # Checkpoints are the engine's own (sharded) format, plus every rank's noise state.
    ckpt = tmp_path / "checkpoints" / "step-4"
    assert (ckpt / model_state).is_dir()
    assert (ckpt / "noise_rng_0.safetensors").is_file() and (ckpt / "noise_rng_1.safetensors").is_file()
    if replicated:
        rank0 = load_file(str(tmp_path / "rank0-steps4.safetensors"))
        rank1 = load_file(str(tmp_path / "rank1-steps4.safetensors"))
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
