"""Shared pytest fixtures: offline mode and tiny models built from a config (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parent.parent / "shared" / "data"


def _tiny_bert_config(num_labels: int | None = None, **overrides: float):
    from transformers import BertConfig

    kwargs = {"num_labels": num_labels} if num_labels else {}
    kwargs.update(overrides)
    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **kwargs,
    )


def _save_tokenizer(target: Path) -> None:
    from transformers import AutoTokenizer

    from gumbel_rag.defaults import default_reranker_path

    AutoTokenizer.from_pretrained(str(default_reranker_path())).save_pretrained(str(target))


def _bi_encoder_dir(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides: float) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    torch.manual_seed(0)
    raw = tmp_path_factory.mktemp(f"{name}-raw")
    BertModel(_tiny_bert_config(**overrides)).save_pretrained(str(raw))
    _save_tokenizer(raw)
    model = SentenceTransformer(str(raw), device="cpu")
    out = tmp_path_factory.mktemp(name)
    model.save_pretrained(str(out))
    return out


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
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp(f"tiny-cross-encoder-{num_labels}")
    BertForSequenceClassification(_tiny_bert_config(num_labels)).save_pretrained(str(out))
    _save_tokenizer(out)
    return out


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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-reader")
    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
    )
    LlamaForCausalLM(config).save_pretrained(str(out))
    _save_tokenizer(out)
    return out
