"""A held-out validation split of the user's own log, the best checkpoint on it, early stopping."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gumbel_rag import GumbelReranker
from gumbel_rag.data import generate_multihop
from gumbel_rag.losses import GumbelRerankLoss, SupervisedListwiseLoss
from gumbel_rag.readers import load_reader
from gumbel_rag.testing import interrupted_at
from gumbel_rag.trainer import MIN_ROWS_TO_SPLIT, TrainConfig, split_validation, train


def _config(out: Path, **overrides) -> TrainConfig:
    base = dict(
        output_dir=str(out),
        learning_rate=3e-3,
        batch_size=2,
        gradient_accumulation_steps=1,
        save_every=1000,
        mixed_precision="no",
        progress=False,
        interpolation=1.0,  # the selected weights themselves
    )
    return TrainConfig(**{**base, **overrides})


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_validation_is_seeded_disjoint_and_bounded() -> None:
    rows = generate_multihop(40, seed=1, n_candidates=4)
    train_rows, val = split_validation(rows, 0.1, seed=0)
    assert len(val) == 4 and len(train_rows) == 36
    assert {ex.question for ex in val}.isdisjoint(ex.question for ex in train_rows)
    assert split_validation(rows, 0.1, seed=0) == (train_rows, val)
    assert split_validation(rows, 0.1, seed=1)[1] != val
    # Order is kept in both parts, and tiny logs or fraction 0 are not split.
    assert [rows.index(ex) for ex in val] == sorted(rows.index(ex) for ex in val)
    assert split_validation(rows[: MIN_ROWS_TO_SPLIT - 1], 0.1, seed=0)[1] == []
    assert split_validation(rows, 0.0, seed=0) == (rows, [])


def _mislabelled(rows):
    """Training rows whose gold points at a wrong candidate: learning them makes the reranker worse."""
    out = []
    for ex in rows:
        wrong = [i for i in range(len(ex.candidates)) if i not in ex.gold]
        out.append(replace(ex, gold=wrong[:1]))
    return out


def test_training_that_only_hurts_keeps_the_starting_model_and_stops_early(tiny_bi_encoder_dir, tmp_path):
    rows = generate_multihop(8, seed=5, n_candidates=5)
    # The dev set (the validation set here) keeps the true labels; training teaches the opposite on the
    # same questions, so every step makes the reranker worse on it.
    result = train(
        reranker := GumbelReranker.from_pretrained(tiny_bi_encoder_dir),
        SupervisedListwiseLoss(),
        _mislabelled(rows),
        _config(tmp_path, learning_rate=1e-2, epochs=10, eval_every=2, early_stopping_patience=2),
        dev_examples=rows,
    )
    assert result.best_step == 0 and result.stopped_early
    assert result.steps == 4  # evaluations at steps 2 and 4 were worse than step 0's: patience 2
    start = GumbelReranker.from_pretrained(tiny_bi_encoder_dir).state_dict()
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in start.items() if k in saved)
    assert all(torch.equal(reranker.state_dict()[k], v) for k, v in start.items())
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary["best_step"] == 0 and summary["stopped_early"] is True


def test_without_dev_a_validation_split_is_held_out_and_the_best_step_kept(tiny_bi_encoder_dir, tmp_path):
    rows = generate_multihop(30, seed=6, n_candidates=5)
    result = train(
        GumbelReranker.from_pretrained(tiny_bi_encoder_dir),
        SupervisedListwiseLoss(),
        rows,
        _config(tmp_path, eval_every=2, early_stopping_patience=None),
    )
    assert result.validation_rows == 3
    validation = [r for r in _rows(tmp_path / "logs" / "metrics.jsonl") if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [0, 2, 4, 6, 8, 10, 12, 14]
    best = max(validation, key=lambda r: r["score"])  # the first of equal scores wins, as in training
    assert result.best_step == best["step"] and result.best_score == pytest.approx(best["score"], rel=1e-6)
    assert all(abs(r["score"] - (r["ndcg@2"] + r["ndcg@5"]) / 2) < 1e-9 for r in validation)
    # The saved model is the best step's checkpoint, which pruning kept.
    ckpt = tmp_path / "checkpoints" / f"step-{result.best_step}"
    want = load_file(str(ckpt / "model.safetensors"))  # the reranker's state dict at that step
    got = GumbelReranker.from_pretrained(tmp_path).state_dict()
    assert want.keys() <= got.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_unlabelled_validation_uses_the_readers_answer_loss(tiny_bi_encoder_dir, tiny_reader_dir, tmp_path):
    reader = load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=16)
    rows = [replace(ex, gold=None) for ex in generate_multihop(20, seed=7, n_candidates=4)]
    result = train(
        GumbelReranker.from_pretrained(tiny_bi_encoder_dir),
        GumbelRerankLoss(reader, k=2),
        rows,
        _config(tmp_path, eval_every=3, max_steps=6),
    )
    validation = [r for r in _rows(tmp_path / "logs" / "metrics.jsonl") if r["split"] == "validation"]
    assert result.validation_rows == 2 and [r["step"] for r in validation] == [0, 3, 6]
    assert all(r["score"] == -r["answer_nll"] and r["answer_nll"] > 0 for r in validation)


@pytest.mark.parametrize(("labelled", "by_gold"), [(3, True), (2, True), (1, False)])
def test_partly_labelled_validation_uses_ndcg_on_its_labelled_rows(
    tiny_bi_encoder_dir, tiny_reader_dir, tmp_path, labelled: int, by_gold: bool
) -> None:
    reader = load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=16)
    dev = generate_multihop(4, seed=8, n_candidates=4)
    dev = dev[:labelled] + [replace(ex, gold=None) for ex in dev[labelled:]]
    train(
        GumbelReranker.from_pretrained(tiny_bi_encoder_dir),
        GumbelRerankLoss(reader, k=2),
        generate_multihop(8, seed=7, n_candidates=4),
        _config(tmp_path, eval_every=2, max_steps=2),
        dev,
    )
    validation = [r for r in _rows(tmp_path / "logs" / "metrics.jsonl") if r["split"] == "dev"]
    assert [r["step"] for r in validation] == [0, 2]
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    if by_gold:  # at least half the rows have gold: nDCG@k over those rows
        assert all(r["n"] == labelled for r in validation)
        assert summary["best_score"] == pytest.approx(
            max((r["ndcg@2"] + r["ndcg@5"]) / 2 for r in validation), rel=1e-6
        )
    else:
        assert summary["best_score"] < 0  # minus the reader's answer loss


def test_a_resumed_run_selects_and_stops_like_an_uninterrupted_one(tiny_bi_encoder_dir, tmp_path) -> None:
    rows = generate_multihop(30, seed=9, n_candidates=5)
    settings = dict(eval_every=2, save_every=2, learning_rate=1e-2)
    full = train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), SupervisedListwiseLoss(), rows,
                 _config(tmp_path / "full", **settings))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        killed = interrupted_at(SupervisedListwiseLoss(), call=6)
        train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), killed, rows,
              _config(tmp_path / "killed", **settings))  # fmt: skip
    resumed = train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), SupervisedListwiseLoss(), rows,
                    _config(tmp_path / "killed", resume=True, **settings))  # fmt: skip
    assert (resumed.steps, resumed.best_step, resumed.stopped_early) == (
        full.steps,
        full.best_step,
        full.stopped_early,
    )
    want, got = _state_of(tmp_path / "full"), _state_of(tmp_path / "killed")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)


def _state_of(path: Path) -> dict[str, torch.Tensor]:
    return GumbelReranker.from_pretrained(path).state_dict()
