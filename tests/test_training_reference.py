"""Behaviour pin: short seeded runs of every method end with the weights recorded before the training core
was restructured (tests/data/reference_runs.safetensors, written by the pre-restructure trainer).

Small tensors are compared whole; the word-embedding matrix (most of a tiny model) by the sum and the sum
of squares of its change. A change to the loop, a loss, the reader or the reranker that alters training
fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gumbel_rag import GumbelReranker
from gumbel_rag.data import generate_multihop
from gumbel_rag.losses import build_loss
from gumbel_rag.readers import load_reader
from gumbel_rag.trainer import TrainConfig, train

REFERENCE = Path(__file__).parent / "data" / "reference_runs.safetensors"
# name -> (method, loss options); every run: k=2 for G-Rerank, seed 0, 2 steps of 2 x 2 questions, lr 5e-3.
RUNS = {
    "gumbel": ("gumbel", {"k": 2}),
    "gumbel-no-noise": ("gumbel", {"k": 2, "noise": False}),
    "emdr": ("emdr", {}),
    "pdist": ("pdist", {}),
    "loop": ("loop", {}),
    "adist": ("adist", {}),
    "supervised": ("supervised", {}),
    "gumbel-cross": ("gumbel", {"k": 2}),
}
EMBEDDING_NUMEL = 50_000  # tensors above this size are pinned by their change's sum and sum of squares
LR = 5e-3
# Float32 on another CPU or a new release of a dependency reorders sums: the loss moves by ~1e-7, and
# Adam, which divides by the gradient's own size, turns that into a visible part of one step (lr) on the
# few weights whose gradient is near zero (seen: 1% of a step on 2026-11; 5.3% on one of 1024 weights
# with transformers 5.24 / accelerate 1.16 / sentence-transformers 6.3), up to two steps at worst (a
# near-zero gradient whose sign flips). So nearly every weight must agree to 5% of a step, and a few
# (STRAY_FRACTION of a tensor, at least one) may stray by up to two steps. A changed loss or loop moves
# most weights by whole steps.
WEIGHT_ATOL = 0.05 * LR
WEIGHT_RTOL = 1e-3
STRAY_FRACTION, STRAY_ATOL = 0.005, 2 * LR
# The change's sum cancels (near 0 for some runs), so it gets an absolute floor too; methods differ in it
# by 0.1 and more, float noise moves it by ~3e-6.
SUM_RTOL, SUM_ATOL = 1e-3, 1e-4
# The loss is a softmax over one question's candidates, so a cross-encoder's single-logit bias shifts
# every score alike and gets no gradient but float noise, which Adam turns into whole steps of either
# sign: its trained value is noise, not behaviour.
SHIFT_ONLY = {"gumbel-cross": {"model.0.model.classifier.bias"}}


def weights_disagree(got: torch.Tensor, want: torch.Tensor) -> str | None:
    """Why ``got`` is not ``want`` up to float noise (None when it is): see STRAY_FRACTION above."""
    diff = (got - want).abs()
    off = int((diff > WEIGHT_ATOL + WEIGHT_RTOL * want.abs()).sum())
    allowed = max(1, int(STRAY_FRACTION * want.numel()))
    if off > allowed:
        return (
            f"{off} of {want.numel()} weights differ by more than {WEIGHT_ATOL:g} (at most {allowed} may); "
            f"greatest difference {diff.max().item():.3g}"
        )
    if not diff.max().item() <= STRAY_ATOL:
        return f"a weight differs by {diff.max().item():.3g}"
    return None


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(REFERENCE))


@pytest.fixture(scope="module")
def reader(tiny_reader_dir: Path):
    return load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=24)


@pytest.mark.parametrize("name", list(RUNS))
def test_run_ends_with_the_recorded_weights(
    name, reference, reader, tiny_bi_encoder_dir, tiny_cross_encoder_dir, tmp_path
) -> None:
    method, options = RUNS[name]
    model_dir = tiny_cross_encoder_dir if name.endswith("cross") else tiny_bi_encoder_dir
    reranker = GumbelReranker.from_pretrained(model_dir)
    initial = {k: v.clone() for k, v in reranker.state_dict().items()}
    loss = build_loss(method, None if method == "supervised" else reader, **options)
    config = TrainConfig(
        output_dir=str(tmp_path),
        learning_rate=LR,
        batch_size=2,
        gradient_accumulation_steps=2,
        save_every=100,
        eval_every=100,
        mixed_precision="no",
        progress=False,
        seed=0,
        validation_fraction=0.0,  # the loop as it was: every row trains, no selection,
        interpolation=1.0,  # and the trained weights are saved
    )
    train(reranker, loss, generate_multihop(8, seed=3, n_candidates=5), config)
    moved = 0.0
    for key, value in reranker.state_dict().items():
        if key in SHIFT_ONLY.get(name, ()):
            continue
        if value.numel() > EMBEDDING_NUMEL:
            delta = value.float() - initial[key].float()
            got = torch.stack([delta.sum(), (delta**2).sum()])
            want = torch.cat([reference[f"{name}/{key}/delta_sum"], reference[f"{name}/{key}/delta_sq"]])
            torch.testing.assert_close(got, want, rtol=SUM_RTOL, atol=SUM_ATOL, msg=f"{name}: {key}")
        else:
            want = reference[f"{name}/{key}"]
            assert (why := weights_disagree(value.float(), want)) is None, f"{name}: {key}: {why}"
            moved = max(moved, (want - initial[key].float()).abs().max().item())
    # The tolerance is far below what training moved: a changed loss or loop could not pass unseen.
    assert moved > 10 * WEIGHT_ATOL


def test_the_tolerance_tells_every_two_methods_apart(reference) -> None:
    # Two different methods' recorded weights must not pass as one run with float noise.
    names = [n for n in RUNS if not n.endswith("cross")]
    keys = sorted(
        k.split("/", 1)[1]
        for k in reference
        if k.startswith("gumbel/") and not k.endswith(("/delta_sum", "/delta_sq"))
    )
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            disagree = sum(
                weights_disagree(reference[f"{a}/{k}"], reference[f"{b}/{k}"]) is not None for k in keys
            )
            assert disagree > len(keys) // 2, f"{a} and {b} agree on {len(keys) - disagree} of {len(keys)}"
