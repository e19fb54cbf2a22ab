"""The do-no-harm guards: a KL anchor to the starting ranking, L2-SP, weight interpolation, LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from gumbel_rag import GumbelReranker
from gumbel_rag.cli import main
from gumbel_rag.data import generate_multihop, write_qalog
from gumbel_rag.errors import ConfigError
from gumbel_rag.losses import AnchoredLoss, GumbelRerankLoss, SupervisedListwiseLoss, build_loss
from gumbel_rag.losses.distillation import document_log_probs, kl_to_teacher
from gumbel_rag.readers import load_reader
from gumbel_rag.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def rows():
    return generate_multihop(8, seed=11, n_candidates=5)


def _config(out: Path, **overrides) -> TrainConfig:
    base = dict(
        output_dir=str(out),
        learning_rate=5e-3,
        batch_size=2,
        gradient_accumulation_steps=1,
        save_every=1000,
        mixed_precision="no",
        progress=False,
        validation_fraction=0.0,
        select_best=False,
        interpolation=1.0,
    )
    return TrainConfig(**{**base, **overrides})


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in GumbelReranker.from_pretrained(model_dir).state_dict().items()}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a) ** 0.5)


def test_anchor_adds_the_kl_to_a_frozen_copy_of_the_start(tiny_bi_encoder_dir, rows) -> None:
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir).train()
    base = SupervisedListwiseLoss()
    anchored = build_loss("supervised", anchor_to=reranker, anchor_weight=2.0)
    assert isinstance(anchored, AnchoredLoss) and not list(anchored.parameters())
    assert anchored.options() == {"method": "supervised", "temperature": 1.0, "anchor_weight": 2.0,
                                  "anchor_temperature": 1.0}  # fmt: skip
    questions, docs = (
        [ex.question for ex in rows[:2]],
        [[c.content for c in ex.candidates] for ex in rows[:2]],
    )
    prepared = anchored.prepare(rows[:2])
    torch.manual_seed(0)
    scores, mask = reranker(questions, docs)
    # At the start the reranker is its own reference only up to dropout; with scores moved, the KL shows.
    moved = scores + torch.randn_like(scores)
    reference = prepared[1]
    expected = base(moved, mask, prepared[0]) + 2.0 * kl_to_teacher(
        document_log_probs(moved, mask, 1.0), reference, mask
    )
    torch.testing.assert_close(anchored(moved, mask, prepared), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(reference, reranker.eval()(questions, docs)[0].detach(), rtol=1e-5, atol=1e-5)
    # The reference stays where it was while the reranker trains.
    before = {k: v.clone() for k, v in anchored.__dict__["reference"].state_dict().items()}
    with torch.no_grad():
        next(reranker.parameters()).add_(1.0)
    after = anchored.__dict__["reference"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="anchor_to"):
        build_loss("supervised", anchor_weight=1.0)
    with pytest.raises(ConfigError, match="anchor_weight"):
        build_loss("supervised", anchor_to=reranker, anchor_weight=float("nan"))


def test_a_strong_anchor_keeps_the_ranking_closer_to_the_start(tiny_bi_encoder_dir, rows, tmp_path) -> None:
    start = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    probe = [(ex.question, [c.content for c in ex.candidates]) for ex in rows]

    def ranking_change(model: GumbelReranker) -> float:
        kl = 0.0
        for q, d in probe:
            p0 = torch.log_softmax(torch.tensor(start.score(q, d)), -1)
            p1 = torch.log_softmax(torch.tensor(model.score(q, d)), -1)
            kl += float((p0.exp() * (p0 - p1)).sum())
        return kl

    changes = []
    for weight in (0.0, 50.0):
        reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
        loss = build_loss("supervised", anchor_to=reranker, anchor_weight=weight)
        train(reranker, loss, rows, _config(tmp_path / str(weight), epochs=3))
        changes.append(ranking_change(reranker.eval()))
    assert changes[1] < 0.5 * changes[0]


def test_start_decay_pulls_the_weights_back(tiny_bi_encoder_dir, rows, tmp_path) -> None:
    start = _state(tiny_bi_encoder_dir)
    distances = {}
    for decay in (0.0, 50.0, 200.0):  # lr 5e-3: rate 0, 0.25 and 1 per step
        out = tmp_path / f"decay{decay}"
        train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), SupervisedListwiseLoss(), rows,
              _config(out, start_decay=decay, warmup_ratio=0.0))  # fmt: skip
        distances[decay] = _distance(_state(out), start)
    assert distances[50.0] < distances[0.0]
    # A pull of the whole way at the last step (lr decays linearly, so the last rate is lr * decay / steps).
    assert distances[200.0] < distances[50.0]


def test_interpolation_saves_the_weights_between_start_and_trained(
    tiny_bi_encoder_dir, rows, tmp_path
) -> None:
    start = _state(tiny_bi_encoder_dir)
    trained, half, none = tmp_path / "a1", tmp_path / "a05", tmp_path / "a0"
    for out, alpha in ((trained, 1.0), (half, 0.5), (none, 0.0)):
        train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), SupervisedListwiseLoss(), rows,
              _config(out, interpolation=alpha))  # fmt: skip
    full, mid, zero = _state(trained), _state(half), _state(none)
    for key in start:
        if start[key].is_floating_point():
            torch.testing.assert_close(zero[key], start[key], rtol=0, atol=0)
            torch.testing.assert_close(mid[key], (start[key] + full[key]) / 2, rtol=1e-5, atol=1e-6)
    assert _distance(full, start) > 0


def test_lora_trains_adapters_and_saves_a_plain_model(
    tiny_bi_encoder_dir, tiny_reader_dir, rows, tmp_path
) -> None:
    reader = load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=16)
    start = _state(tiny_bi_encoder_dir)
    train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), GumbelRerankLoss(reader, k=2), rows,
          _config(tmp_path, lora_rank=4, learning_rate=5e-2))  # fmt: skip
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not [k for k in saved if "lora" in k or "base_layer" in k]
    after = _state(tmp_path)
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert changed and all(k.endswith(("query.weight", "value.weight")) for k in changed)
    SentenceTransformer(str(tmp_path), device="cpu")  # stock loading, no peft involved
    with pytest.raises(ConfigError, match="lora_rank"):
        _config(tmp_path, lora_rank=0)


def test_the_cli_takes_every_guard(tiny_bi_encoder_dir, tmp_path) -> None:
    write_qalog(generate_multihop(12, seed=2, n_candidates=4), tmp_path / "train.jsonl")
    out = tmp_path / "model"
    args = ["train", "--data", str(tmp_path / "train.jsonl"), "--output", str(out), "--method", "supervised",
            "--reranker", str(tiny_bi_encoder_dir), "--no-progress", "--mixed-precision", "no",
            "--anchor-weight", "0.5", "--start-decay", "10", "--interpolation", "0.8", "--patience", "0",
            "--validation-fraction", "0.2"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "logs" / "train_config.json").read_text())
    assert config["loss"]["anchor_weight"] == 0.5
    assert (config["start_decay"], config["interpolation"], config["early_stopping_patience"]) == (
        10.0,
        0.8,
        None,
    )
    assert json.loads((out / "logs" / "summary.json").read_text())["validation_rows"] == 2
