"""The Accelerate training loop on tiny models: outputs, determinism, resume, non-finite steps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from gumbel_rag import GumbelReranker
from gumbel_rag.data import generate_multihop
from gumbel_rag.errors import TrainingError
from gumbel_rag.losses import GumbelRerankLoss, SupervisedListwiseLoss
from gumbel_rag.readers import load_reader
from gumbel_rag.testing import interrupted_at
from gumbel_rag.trainer import TrainConfig, train, trainable_examples


@pytest.fixture(scope="module")
def data() -> tuple[list, list]:
    examples = generate_multihop(14, seed=3, n_candidates=5)
    return examples[:10], examples[10:]


@pytest.fixture(scope="module")
def reader(tiny_reader_dir: Path):
    return load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=24)


@pytest.fixture(scope="module")
def loss(reader) -> GumbelRerankLoss:
    return GumbelRerankLoss(reader, k=2)


def _config(tmp_path: Path, **overrides) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path),
        learning_rate=5e-3,
        gradient_accumulation_steps=2,
        batch_size=2,
        eval_every=2,
        save_every=1,
        mixed_precision="no",
        progress=False,
        # The loop's mechanics without checkpoint selection (tests/test_training_selection.py has those).
        validation_fraction=0.0,
        select_best=False,
        interpolation=1.0,
    )
    base.update(overrides)
    return TrainConfig(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(path.glob("*.safetensors"))))


def test_training_writes_model_logs_and_curves(tiny_bi_encoder_dir, reader, loss, data, tmp_path) -> None:
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    before = {k: v.clone() for k, v in reranker.state_dict().items()}
    reader_before = {k: v.clone() for k, v in reader.model.state_dict().items()}
    result = train(reranker, loss, data[0], _config(tmp_path), data[1])

    # 10 examples / (batch 2 * accumulation 2) -> 3 optimizer steps (the last window is short).
    assert result.steps == 3 and result.skipped_steps == 0
    assert any(not torch.equal(before[k], v) for k, v in reranker.state_dict().items())
    assert all(torch.equal(reader_before[k], v) for k, v in reader.model.state_dict().items())
    assert all(p.grad is None for p in reader.model.parameters())

    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if r["split"] == "train")
    assert [r["step"] for r in rows if r["split"] == "dev"] == [0, 2, 3]
    assert {"recall@2", "recall@5", "mrr"} <= set(rows[0])
    assert result.curves_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "logs" / "summary.json").read_text())["steps"] == 3
    # Checkpoints are pruned to the newest save_total_limit and hold safetensors weights.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-3"]
    ckpt = tmp_path / "checkpoints" / "step-3"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "noise_rng_0.safetensors").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["progress"]["step"] == 3
    # The loop's own state is never pickled (accelerate would load custom pickles with weights_only=False).
    assert not list(ckpt.glob("custom_checkpoint_*"))

    # The output directory is the model: our loader and stock sentence-transformers both read it.
    loaded = GumbelReranker.from_pretrained(tmp_path)
    stock = SentenceTransformer(str(tmp_path), device="cpu")
    texts = [c.content for c in data[1][0].candidates]
    q = stock.encode([data[1][0].question], convert_to_tensor=True, normalize_embeddings=True)
    d = stock.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(
        torch.tensor(loaded.score(data[1][0].question, texts)),
        (q @ d.T)[0] / loaded.temperature,
        atol=1e-4,
        rtol=1e-5,
    )


def test_same_seed_same_weights(tiny_bi_encoder_dir, loss, data, tmp_path) -> None:
    a = train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), loss, data[0], _config(tmp_path / "a"))
    b = train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), loss, data[0], _config(tmp_path / "b"))
    c = train(
        GumbelReranker.from_pretrained(tiny_bi_encoder_dir), loss, data[0], _config(tmp_path / "c", seed=1)
    )
    wa, wb, wc = _weights(a.model_dir), _weights(b.model_dir), _weights(c.model_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_finishes_with_the_uninterrupted_weights(
    tiny_bi_encoder_dir, reader, loss, data, tmp_path
) -> None:
    full = train(
        GumbelReranker.from_pretrained(tiny_bi_encoder_dir), loss, data[0], _config(tmp_path / "full")
    )
    cfg = _config(tmp_path / "crash", epochs=1)
    crash_loss = interrupted_at(GumbelRerankLoss(reader, k=2), call=5)  # dies in the micro-batch of step 3
    with pytest.raises(KeyboardInterrupt):
        train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), crash_loss, data[0], cfg)
    assert (tmp_path / "crash" / "checkpoints" / "step-2").is_dir()
    resumed = train(
        GumbelReranker.from_pretrained(tiny_bi_encoder_dir),
        loss,
        data[0],
        _config(tmp_path / "crash", resume=True),
    )
    assert resumed.steps == full.steps
    wf, wr = _weights(full.model_dir), _weights(resumed.model_dir)
    for key in wf:
        torch.testing.assert_close(wr[key], wf[key], atol=1e-6, rtol=1e-5)


class _NaNAt(GumbelRerankLoss):
    """G-Rerank whose N-th call returns NaN."""

    def __init__(self, reader, call: int) -> None:
        super().__init__(reader, k=2)
        self.call, self.n = call, 0

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self.n += 1
        out = super().forward(*args, **kwargs)
        return out * float("nan") if self.n == self.call else out


def test_non_finite_step_is_skipped_and_counted(tiny_bi_encoder_dir, reader, data, tmp_path) -> None:
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    result = train(reranker, _NaNAt(reader, call=1), data[0], _config(tmp_path))
    assert result.skipped_steps == 1 and result.steps == 3
    assert all(torch.isfinite(p).all() for p in reranker.parameters())


def test_non_finite_step_can_raise(tiny_bi_encoder_dir, reader, data, tmp_path) -> None:
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step 1"):
        train(
            GumbelReranker.from_pretrained(tiny_bi_encoder_dir),
            _NaNAt(reader, call=1),
            data[0],
            _config(tmp_path, nonfinite="raise"),
        )


def test_loss_gradient_reaches_reranker_only(tiny_bi_encoder_dir, reader, data) -> None:
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir).train()
    ex = data[0][0]
    docs = [c.content for c in ex.candidates]
    scores, valid = reranker([ex.question], [docs])
    batch = reader.prepare([ex.question], [docs], [ex.answers[0]])
    loss = GumbelRerankLoss(reader, k=2)(scores, valid, batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reranker.parameters())
    assert all(p.grad is None for p in reader.model.parameters())
    assert "reader" not in dict(GumbelRerankLoss(reader).named_modules())


def test_bad_config_and_empty_data(tiny_bi_encoder_dir, reader, loss, data, tmp_path) -> None:
    with pytest.raises(ValueError, match="k must be"):
        GumbelRerankLoss(reader, k=0)
    with pytest.raises(ValueError, match="nonfinite"):
        TrainConfig(output_dir=str(tmp_path), nonfinite="ignore")
    with pytest.raises(TrainingError, match="nothing to train: none of the 0 rows"):
        train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), loss, [], _config(tmp_path))
    # Every row has 5 candidates: a top-5 loss can learn nothing from any of them, and says so per row.
    with pytest.raises(
        TrainingError, match=r"none of the 10 rows can teach the gumbel loss \(10 at most k=5 candidates\)$"
    ):
        train(
            GumbelReranker.from_pretrained(tiny_bi_encoder_dir),
            GumbelRerankLoss(reader),
            data[0],
            _config(tmp_path),
        )


def test_train_drops_the_rows_its_loss_cannot_learn_from(tiny_bi_encoder_dir, reader, data, tmp_path) -> None:
    two = data[0][4]  # cut to its first gold candidate and one other
    others = [c for i, c in enumerate(two.candidates) if i not in two.gold]
    rows = [
        *data[0][:4],
        replace(two, candidates=[two.candidates[two.gold[0]], others[0]], gold=[0]),
        replace(data[0][5], gold=None),
    ]
    supervised = SupervisedListwiseLoss()
    kept, dropped = trainable_examples(supervised, rows)
    assert kept == rows[:5] and dropped.skipped == {"no gold candidate": 1}
    kept, dropped = trainable_examples(GumbelRerankLoss(reader, k=2), rows)
    assert kept == [*rows[:4], rows[5]] and dropped.skipped == {"at most k=2 candidates": 1}
    result = train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), supervised, rows, _config(tmp_path))
    assert result.dropped.skipped == {"no gold candidate": 1} and result.steps == 2
