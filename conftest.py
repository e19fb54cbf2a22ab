"""Shared pytest fixtures: offline mode and tiny models built from a config (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parent.parent / "shared" / "data"


def _bi_encoder_dir(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides: float) -> Path:
    from gumbel_rag.testing import build_tiny_bi_encoder

    return build_tiny_bi_encoder(tmp_path_factory.mktemp(name) / "model", **overrides)


@pytest.fixture(scope="session")
def tiny_bi_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT bi-encoder saved as a sentence-transformers directory."""
    return _bi_encoder_dir(tmp_path_factory, "tiny-bi-encoder")


@pytest.fixture(scope="session")
def dropout_free_bi_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bi-encoder without dropout, for runs that must differ only in how work is split."""
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return _bi_encoder_dir(tmp_path_factory, "tiny-bi-encoder-no-dropout", **no_dropout)


def _cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory, num_labels: int) -> Path:
    from gumbel_rag.testing import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp(f"tiny-cross-encoder-{num_labels}"), num_labels)


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT sequence-classification model with one logit (a plain HF directory)."""
    return _cross_encoder_dir(tmp_path_factory, 1)


@pytest.fixture(scope="session")
def tiny_two_logit_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT sequence-classification model with two logits (irrelevant, relevant)."""
    return _cross_encoder_dir(tmp_path_factory, 2)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data from the project root; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_reader_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama reader (BERT word-piece tokenizer, no chat template) saved to disk."""
    from gumbel_rag.testing import build_tiny_reader

    return build_tiny_reader(tmp_path_factory.mktemp("tiny-reader") / "model")
