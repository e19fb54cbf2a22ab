"""Reliability of the core: arbitrary inputs, huge documents, interrupted checkpoint writes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gumbel_rag import GumbelReranker
from gumbel_rag.checkpoints import list_checkpoints
from gumbel_rag.data import generate_multihop, load_examples
from gumbel_rag.losses import GumbelRerankLoss
from gumbel_rag.readers import load_reader
from gumbel_rag.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def reranker(tiny_bi_encoder_dir: Path) -> GumbelReranker:
    return GumbelReranker.from_pretrained(tiny_bi_encoder_dir, batch_size=3)


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    query=texts,
    docs=st.lists(texts, max_size=9),
    top_k=st.none() | st.integers(min_value=1, max_value=12),
    threshold=st.none() | st.floats(min_value=-25, max_value=25),
)
def test_rerank_keeps_every_input_sorted_with_stable_ties(reranker, query, docs, top_k, threshold) -> None:
    full = reranker.rerank(query, docs)
    assert sorted(r.index for r in full) == list(range(len(docs)))
    assert all(r.text == docs[r.index] for r in full)
    for a, b in itertools.pairwise(full):
        assert a.score > b.score or (a.score == b.score and a.index < b.index)
    cut = reranker.rerank(query, docs, top_k=top_k, score_threshold=threshold)
    expected = [r for r in full if threshold is None or r.score >= threshold]
    assert cut == (expected if top_k is None else expected[:top_k])


def test_multi_megabyte_document_loads_and_is_scored(reranker, tmp_path: Path) -> None:
    huge = "word " * 700_000  # 3.5 MB
    row = {"question": "q", "answer": "a", "candidates": [huge, "short", "other"]}
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf8")
    (example,), summary = load_examples(path)
    assert summary.loaded == 1 and len(example.candidates[0].text) == len(huge)
    ranked = reranker.rerank(example.question, [c.text for c in example.candidates])
    assert sorted(r.index for r in ranked) == [0, 1, 2]
    assert ranked.truncated == 1


def test_resume_ignores_a_half_written_checkpoint(
    tiny_bi_encoder_dir, tiny_reader_dir, tmp_path, monkeypatch
) -> None:
    reader = load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=16)
    examples = generate_multihop(6, seed=4, n_candidates=4)
    config = dict(output_dir=str(tmp_path), gradient_accumulation_steps=1, save_every=1,
                  mixed_precision="no", progress=False, max_steps=3)  # fmt: skip
    loss = GumbelRerankLoss(reader, k=2)
    train(GumbelReranker.from_pretrained(tiny_bi_encoder_dir), loss, examples, TrainConfig(**config))
    # What a kill during a checkpoint write leaves: a temporary directory with partial files.
    stale = tmp_path / "checkpoints" / ".tmp-step-99"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\x00" * 10)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-2", "step-3"]
    config["max_steps"] = 5
    fresh = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    loads: list[object] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    # max_steps changes the schedule, so continuing with more steps needs allow_changed_settings.
    result = train(fresh, loss, examples, TrainConfig(**config, resume=True, allow_changed_settings=True))
    assert result.steps == 5
    # Resuming reads the optimizer and RNG states, and never unpickles arbitrary objects.
    assert loads and all(flag is True for flag in loads)


def test_remote_code_is_off_by_default() -> None:
    import inspect

    from gumbel_rag.cli import build_parser
    from gumbel_rag.readers import load_reader as reader_loader

    for fn in (GumbelReranker.from_pretrained, reader_loader):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    for command in ("rerank", "train", "eval", "demo"):
        args = ["--query", "q", "--documents", "d"] if command == "rerank" else []
        args += ["--data", "x", "--output", "o"] if command == "train" else []
        args += ["--data", "x"] if command == "eval" else []
        assert build_parser().parse_args([command, *args]).trust_remote_code is False
