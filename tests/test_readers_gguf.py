"""GGUF readers: the conversion cache keyed on content, packaged short names, the opt-in Gemma-3-270M."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gumbel_rag.readers import DecoderReader, load_reader
from gumbel_rag.readers import gguf as gguf_mod

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAVE_GEMMA = importlib.util.find_spec(gguf_mod.GEMMA_PACKAGE) is not None


def write_tiny_gguf(path: Path, seed: int) -> None:
    """A real 1-layer Llama GGUF (byte-level BPE vocabulary) whose weights depend on `seed` only."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    to_unicode = bytes_to_unicode()
    tokens = [to_unicode[b] for b in range(256)] + ["<|endoftext|>", "he"]
    hidden, ff, heads, kv_heads = 16, 32, 2, 1
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3, 1])
    writer.add_token_merges(["h e"])
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(256)
    writer.add_eos_token_id(256)

    def weight(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))

    kv = kv_heads * hidden // heads
    weight("token_embd.weight", len(tokens), hidden)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, np.float32))
    weight("blk.0.attn_q.weight", hidden, hidden)
    weight("blk.0.attn_k.weight", kv, hidden)
    weight("blk.0.attn_v.weight", kv, hidden)
    weight("blk.0.attn_output.weight", hidden, hidden)
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, np.float32))
    weight("blk.0.ffn_gate.weight", ff, hidden)
    weight("blk.0.ffn_up.weight", ff, hidden)
    weight("blk.0.ffn_down.weight", hidden, ff)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    weight("output.weight", len(tokens), hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def embeddings(model: torch.nn.Module) -> torch.Tensor:
    return model.get_input_embeddings().weight.detach().clone()


def test_a_different_file_of_the_same_size_is_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUMBEL_RAG_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "first.gguf", tmp_path / "second.gguf"
    write_tiny_gguf(first, seed=0)
    write_tiny_gguf(second, seed=1)
    assert first.stat().st_size == second.stat().st_size
    expected_first = embeddings(gguf_mod.load_gguf_model(first)[0])
    expected_second = embeddings(gguf_mod.load_gguf_model(second)[0])
    assert not torch.equal(expected_first, expected_second)

    model_path = tmp_path / "models" / "reader.gguf"
    model_path.parent.mkdir()
    model_path.write_bytes(first.read_bytes())
    mtime = model_path.stat().st_mtime_ns
    for name in (None, "fixed-name"):  # content-addressed directory, and a directory named by the caller
        loaded = gguf_mod.load_gguf_model(model_path, cache_name=name)[0]
        assert torch.equal(embeddings(loaded), expected_first)
        # Same path, same size, same mtime (as `cp -p` leaves it): only the bytes differ.
        model_path.write_bytes(second.read_bytes())
        os.utime(model_path, ns=(mtime, mtime))
        loaded = gguf_mod.load_gguf_model(model_path, cache_name=name)[0]
        assert torch.equal(embeddings(loaded), expected_second)
        model_path.write_bytes(first.read_bytes())
        os.utime(model_path, ns=(mtime, mtime))


def test_a_file_is_hashed_once_per_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUMBEL_RAG_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" * 1000)
    hashed: list[Path] = []
    real_hash = gguf_mod._hash_file
    monkeypatch.setattr(gguf_mod, "_hash_file", lambda p: hashed.append(p) or real_hash(p))

    # A file written just now is re-hashed every time (its timestamps may not move on the next write).
    digest = gguf_mod.file_sha256(source)
    assert gguf_mod.file_sha256(source) == digest and len(hashed) == 2
    monkeypatch.setattr(gguf_mod, "_RACY_NS", 0)  # as if it had been written long ago
    assert gguf_mod.file_sha256(source) == digest and len(hashed) == 3
    assert gguf_mod.file_sha256(source) == digest and len(hashed) == 3  # remembered
    source.write_bytes(b"GGUG" * 1000)
    other = gguf_mod.file_sha256(source)
    assert other != digest and len(hashed) == 4
    # A corrupt memo is ignored, not trusted.
    gguf_mod._hash_memo_path(source).write_text("{not json")
    assert gguf_mod.file_sha256(source) == other and len(hashed) == 5


def test_packaged_short_names_and_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gguf_mod.packaged_reader_name("gemma3-270m") == "gemma3-270m"
    assert gguf_mod.packaged_reader_name("Gemma3-270M") == "gemma3-270m"
    assert gguf_mod.packaged_reader_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert gguf_mod.packaged_reader_name("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma3-270m").mkdir()  # a local directory of that name wins over the short name
    assert gguf_mod.packaged_reader_name("gemma3-270m") is None
    assert "Gemma" in gguf_mod.PACKAGED_READERS["gemma3-270m"].licence
    with pytest.raises(ValueError, match="known: gemma3-270m, smollm2-135m-instruct"):
        gguf_mod.load_packaged_model("gemma-7b")


def test_missing_gemma_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes Python's own import raise ImportError, as if the package were absent.
    monkeypatch.setitem(sys.modules, gguf_mod.GEMMA_PACKAGE, None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'gumbel-rag\[gemma\]'.*") as info:
        load_reader("gemma3-270m", device="cpu")
    assert "Gemma terms" in str(info.value)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_GEMMA, reason="needs pip install 'gumbel-rag[gemma]' (Gemma terms of use)")
def test_gemma_reader_cached_loss_equals_the_single_pass() -> None:
    reader = load_reader("gemma3-270m", device="cpu", max_document_tokens=600)
    assert isinstance(reader, DecoderReader)
    config = reader.model.config
    assert config.model_type == "gemma3_text" and config.sliding_window == 512
    assert set(config.layer_types) == {"sliding_attention", "full_attention"}
    directory = gguf_mod.cache_root() / gguf_mod.GEMMA_CACHE_NAME
    assert gguf_mod.is_converted(directory, importlib.import_module(gguf_mod.GEMMA_PACKAGE).EXPECTED_SHA256)

    gold = "The zorblax fruit, grown only on the island of Meru, is bright purple when ripe."
    other = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."
    # Question tokens sit at position P + 600: beyond the 512-token window of the sliding layers, so the
    # long document's first tokens are out of their reach and in reach of the full layers only.
    long_doc = " ".join(["The river Lumo flows north through three small towns."] * 60) + " " + gold
    batch = reader.prepare(["What color is the zorblax fruit?"], [[gold, other, long_doc]], ["Purple"])
    assert reader.question_offset > config.sliding_window
    inf = float("-inf")
    for row in ([0.0, inf, inf], [inf, 0.0, inf], [0.0, 0.0, 0.0], [-1.0, -3.0, -0.5]):
        log_mask = torch.tensor([row])
        cached = reader.answer_loss(batch, log_mask)
        reference = reader.answer_loss_single_pass(batch, log_mask)
        torch.testing.assert_close(cached, reference, rtol=1e-5, atol=0)
    with_gold = reader.answer_loss(batch, torch.tensor([[0.0, inf, inf]]))
    with_other = reader.answer_loss(batch, torch.tensor([[inf, 0.0, inf]]))
    assert with_gold.item() < with_other.item() - 1.0
