"""Runs that must not mix, bad runs that must not save, checkpoints that must not be trusted blindly.

Each test reproduces a failure seen before the fix (issue 15): another run's checkpoints continued as this
one, changed settings accepted on resume, a non-finite model saved, a run with every step skipped
reported as a success, broken checkpoints crashing resume, steps logged twice after a kill.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gumbel_rag import GumbelReranker
from gumbel_rag.checkpoints import checkpoint_problem, checkpoint_step, has_saved_model, list_checkpoints
from gumbel_rag.data import generate_multihop
from gumbel_rag.errors import ConfigError, TrainingError
from gumbel_rag.losses import GumbelRerankLoss, build_loss
from gumbel_rag.readers import load_reader
from gumbel_rag.testing import interrupted_at
from gumbel_rag.trainer import TrainConfig, cap_candidates, train


@pytest.fixture(scope="module")
def reader(tiny_reader_dir: Path):
    return load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=16)


@pytest.fixture(scope="module")
def rows():
    return generate_multihop(8, seed=4, n_candidates=4)


def _config(out: Path, **overrides) -> TrainConfig:
    base = dict(
        output_dir=str(out),
        learning_rate=1e-3,
        batch_size=1,
        gradient_accumulation_steps=1,
        save_every=2,
        eval_every=1000,
        mixed_precision="no",
        progress=False,
        max_steps=6,
    )
    return TrainConfig(**{**base, **overrides})


def _run(model_dir: Path, loss, rows, out: Path, **overrides):
    return train(GumbelReranker.from_pretrained(model_dir), loss, rows, _config(out, **overrides))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


# ----------------------------------------------------------------------------- runs must not mix


def test_a_fresh_run_refuses_a_directory_holding_another_run(tiny_bi_encoder_dir, reader, rows, tmp_path):
    loss = GumbelRerankLoss(reader, k=2)
    _run(tiny_bi_encoder_dir, loss, rows, tmp_path)
    with pytest.raises(
        TrainingError, match=r"already holds a saved model, checkpoints/, logs/ .*--overwrite"
    ):
        _run(tiny_bi_encoder_dir, loss, rows, tmp_path, seed=1)
    # overwrite replaces the earlier run: none of its checkpoints survive next to the new run's.
    result = _run(tiny_bi_encoder_dir, loss, rows, tmp_path, seed=1, overwrite=True, save_every=3)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-3", "step-6"]
    assert result.steps == 6
    with pytest.raises(ConfigError, match="resume and overwrite"):
        _config(tmp_path, resume=True, overwrite=True)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"learning_rate": 5e-4}, "settings.learning_rate: 0.001 -> 0.0005"),
        ({"seed": 3}, "settings.seed: 0 -> 3"),
        ({"k": 3}, "loss.k: 2 -> 3"),
        ({"data": True}, "data: "),
    ],
)
def test_resume_refuses_changed_settings_and_names_them(
    change, expected, tiny_bi_encoder_dir, reader, rows, tmp_path
):
    _run(tiny_bi_encoder_dir, GumbelRerankLoss(reader, k=2), rows, tmp_path, max_steps=4)
    (tmp_path / "model.safetensors").unlink()  # as if killed after its step-4 checkpoint
    for name in ("modules.json", "gumbel_rag.json"):
        (tmp_path / name).unlink()
    loss = GumbelRerankLoss(reader, k=change.get("k", 2))
    data = rows[::-1] if "data" in change else rows
    settings = {k: v for k, v in change.items() if k not in ("k", "data")}
    with pytest.raises(TrainingError, match=r"step-4 belongs to another run \(.*" + _re(expected)):
        _run(tiny_bi_encoder_dir, loss, data, tmp_path, resume=True, **settings)
    # The explicit flag continues, with a warning; nothing else was touched by the refusal.
    result = _run(
        tiny_bi_encoder_dir, loss, data, tmp_path, resume=True, allow_changed_settings=True, **settings
    )
    assert result.steps == 6


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_pruning_keeps_the_checkpoints_of_another_run(tiny_bi_encoder_dir, reader, rows, tmp_path):
    _run(tiny_bi_encoder_dir, GumbelRerankLoss(reader, k=2), rows, tmp_path, max_steps=2)
    other = tmp_path / "checkpoints" / "step-2"
    assert other.is_dir()
    # Continue with other settings: the new run's checkpoints are pruned among themselves only.
    result = _run(
        tiny_bi_encoder_dir,
        GumbelRerankLoss(reader, k=3),
        rows,
        tmp_path,
        resume=True,
        allow_changed_settings=True,
        save_every=1,
        save_total_limit=1,
    )
    assert result.steps == 6
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-2", "step-6"]


# ----------------------------------------------------------------------------- a bad run must not save


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", math.inf),
        ("learning_rate", math.nan),
        ("learning_rate", 0.0),
        ("learning_rate", 1e39),
        ("max_grad_norm", math.nan),
        ("weight_decay", -1.0),
        ("warmup_ratio", 2.0),
        ("epochs", 0),
        ("batch_size", True),
        ("max_candidates", 0),
    ],
)
def test_every_loop_setting_must_be_finite_and_in_range(field, value, tmp_path) -> None:
    with pytest.raises(ConfigError, match=field):
        _config(tmp_path, **{field: value})


@pytest.mark.parametrize("option", ["tau", "kappa", "temperature"])
def test_non_finite_loss_options_are_refused(option, reader) -> None:
    method = "emdr" if option == "temperature" else "gumbel"
    with pytest.raises(ConfigError, match=option):
        build_loss(method, reader, **{option: math.nan})


class _PoisonWeights(GumbelRerankLoss):
    """Sets one reranker weight to inf on its third call, as an overflow would."""

    def __init__(self, reader, reranker: GumbelReranker) -> None:
        super().__init__(reader, k=2)
        self.__dict__["target"] = next(reranker.parameters())
        self.calls = 0

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            with torch.no_grad():
                self.__dict__["target"].view(-1)[0] = math.inf
        return super().forward(*args, **kwargs)


def test_weights_that_become_non_finite_are_never_saved(tiny_bi_encoder_dir, reader, rows, tmp_path):
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    with pytest.raises(TrainingError, match=r"weights became non-finite at optimizer step 3 .*was not saved"):
        train(reranker, _PoisonWeights(reader, reranker), rows, _config(tmp_path))
    assert not (tmp_path / "model.safetensors").exists()


class _AlwaysNaN(GumbelRerankLoss):
    def forward(self, *args, **kwargs) -> torch.Tensor:
        return super().forward(*args, **kwargs) * math.nan


def test_a_run_whose_every_step_was_skipped_fails_unsaved(tiny_bi_encoder_dir, reader, rows, tmp_path):
    with pytest.raises(TrainingError, match="every one of the 6 optimizer steps was skipped"):
        _run(tiny_bi_encoder_dir, _AlwaysNaN(reader, k=2), rows, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


# ----------------------------------------------------------------------------- broken checkpoints


def _killed_run(model_dir: Path, reader, rows, out: Path) -> None:
    """A 6-step run that wrote step-2 and step-4 and was killed during step 5."""
    with pytest.raises(KeyboardInterrupt):
        _run(model_dir, interrupted_at(GumbelRerankLoss(reader, k=2), call=5), rows, out, save_total_limit=5)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-2", "step-4"]


@pytest.mark.parametrize(
    "damage",
    ["truncated random states", "missing random states", "corrupt trainer state", "empty directory"],
)
def test_resume_falls_back_past_a_broken_checkpoint(damage, tiny_bi_encoder_dir, reader, rows, tmp_path):
    loss = GumbelRerankLoss(reader, k=2)
    reference = tmp_path / "reference"
    _run(tiny_bi_encoder_dir, loss, rows, reference)
    out = tmp_path / "run"
    _killed_run(tiny_bi_encoder_dir, reader, rows, out)
    newest = out / "checkpoints" / "step-4"
    if damage == "truncated random states":
        data = (newest / "random_states_0.pkl").read_bytes()
        (newest / "random_states_0.pkl").write_bytes(data[: len(data) // 2])
    elif damage == "missing random states":
        (newest / "random_states_0.pkl").unlink()
    elif damage == "corrupt trainer state":
        (newest / "trainer_state.json").write_text("{not json")
    else:
        shutil.rmtree(newest)
        (out / "checkpoints" / "step-10").mkdir()
        newest = out / "checkpoints" / "step-10"
    assert checkpoint_problem(newest) is not None
    result = _run(tiny_bi_encoder_dir, loss, rows, out, resume=True)
    # It continued from step-2 and ends exactly where the uninterrupted run did.
    assert result.steps == 6
    want, got = _weights(reference), _weights(out)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5)


def test_a_stray_directory_in_checkpoints_is_ignored(tiny_bi_encoder_dir, reader, rows, tmp_path):
    loss = GumbelRerankLoss(reader, k=2)
    (tmp_path / "fresh" / "checkpoints" / "step-best").mkdir(parents=True)
    # A fresh run is refused only because the directory is not empty of checkpoints; overwrite goes on.
    assert _run(tiny_bi_encoder_dir, loss, rows, tmp_path / "fresh", overwrite=True).steps == 6
    out = tmp_path / "resumed"
    _killed_run(tiny_bi_encoder_dir, reader, rows, out)
    (out / "checkpoints" / "step-best").mkdir()
    assert _run(tiny_bi_encoder_dir, loss, rows, out, resume=True).steps == 6


def test_what_a_run_directory_holds_is_read_from_names_and_files(tmp_path) -> None:
    for name in ("step-10", "step-2", "step-best", "step-3.tmp", "other"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path / "checkpoints")] == [2, 10]
    assert checkpoint_step(tmp_path / "step-best") is None and checkpoint_step(tmp_path / "step-07") == 7
    assert not has_saved_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert has_saved_model(tmp_path)


def test_resume_without_any_complete_checkpoint_starts_over_or_refuses(
    tiny_bi_encoder_dir, reader, rows, tmp_path
):
    loss = GumbelRerankLoss(reader, k=2)
    (tmp_path / "checkpoints" / "step-2").mkdir(parents=True)  # never finished
    assert _run(tiny_bi_encoder_dir, loss, rows, tmp_path, resume=True).steps == 6
    # A finished model with its checkpoints gone cannot be continued: say so instead of retraining over it.
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(TrainingError, match="holds a saved model but no complete checkpoint"):
        _run(tiny_bi_encoder_dir, loss, rows, tmp_path, resume=True)


def test_steps_logged_after_the_last_checkpoint_are_not_logged_twice(
    tiny_bi_encoder_dir, reader, rows, tmp_path
):
    loss = GumbelRerankLoss(reader, k=2)
    _killed_run(tiny_bi_encoder_dir, reader, rows, tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "step-4")  # killed after logging steps 3-4, before step-4's save
    _run(tiny_bi_encoder_dir, loss, rows, tmp_path, resume=True)
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- bounded candidates


def test_candidates_beyond_the_cap_are_cut_in_retrieval_order(tiny_bi_encoder_dir, reader, tmp_path):
    many = generate_multihop(4, seed=8, n_candidates=12)
    capped, cut = cap_candidates(many, 5)
    assert cut == 4 and all(len(ex.candidates) == 5 for ex in capped)
    assert capped[0].candidates == many[0].candidates[:5]
    assert all(set(ex.gold) <= set(range(5)) for ex in capped)
    result = _run(tiny_bi_encoder_dir, GumbelRerankLoss(reader, k=2), many, tmp_path, max_candidates=5)
    assert result.cut_rows == 4
