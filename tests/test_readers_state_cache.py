"""DocumentStateCache: bounded memory, safetensors spill, stale-proof keys, and exact reuse in the readers."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3TextConfig,
    T5Config,
    T5ForConditionalGeneration,
)

from gumbel_rag.readers import DecoderReader, DocumentStateCache, FiDReader, load_reader
from gumbel_rag.readers.state_cache import entry_key, model_fingerprint
from gumbel_rag.testing import save_default_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = ["what color is the zorblax fruit?", "where is the eiffel tower?", "which river flows north?"]
ANSWERS = ["bright purple", "in paris", "the lumo"]
CORPUS = [
    "the zorblax fruit is bright purple and grows on tall trees in the valley",
    "the eiffel tower is in paris, a city in france with many old bridges",
    "mount kelvar is the highest peak of the northern range and it is covered in snow",
    "river lumo flows north through three small towns before it reaches the sea",
    "an album recorded in a small county by a player of the war film",
]
# Questions that share documents, as a log mined from one corpus does.
DOCUMENTS = [[CORPUS[0], CORPUS[1], CORPUS[2]], [CORPUS[1], CORPUS[3]], [CORPUS[3], CORPUS[0], CORPUS[4]]]


def tensor(n: int, value: float = 1.0) -> torch.Tensor:
    return torch.full((n,), value)  # n float32 = 4n bytes


def gemma3_reader(tiny_reader_dir: Path, **kwargs: Any) -> DecoderReader:
    """A tiny Gemma 3 (sliding + full layers, window 6) with the word-piece tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_reader_dir))
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=6,
        layer_types=["sliding_attention", "full_attention"],
        initializer_range=0.3,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    return DecoderReader(model, tokenizer, device="cpu", max_document_tokens=12, **kwargs)


def fid_reader(tmp_path: Path, **kwargs: Any) -> FiDReader:
    save_default_tokenizer(tmp_path / "fid-tok")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "fid-tok"))
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    return FiDReader(
        T5ForConditionalGeneration(config), tokenizer, device="cpu", max_document_tokens=12, **kwargs
    )


# ---------------------------------------------------------------------------------------------- the cache


def test_memory_bound_and_lru_without_a_directory() -> None:
    cache = DocumentStateCache(max_bytes=100)
    cache.put("a", [tensor(10)])  # 40 bytes
    cache.put("b", [tensor(10, 2.0)])
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", [tensor(10, 3.0)])  # 120 > 100: evicts b, the least recently used
    assert cache.nbytes == 80 and "b" not in cache and cache.get("b") is None
    assert torch.equal(cache.get("c")[0], tensor(10, 3.0))
    cache.put("huge", [tensor(1000)])  # bigger than the bound: not held (no directory to spill to)
    assert "huge" not in cache and cache.nbytes == 80
    stats = cache.stats()
    assert stats["hits"] == 2 and stats["misses"] == 1 and stats["disk_entries"] == 0


def test_put_copies_views_so_a_batch_buffer_is_not_kept_alive() -> None:
    cache = DocumentStateCache(max_bytes=1000)
    big = torch.arange(100.0)
    view = big[10:20]
    cache.put("k", [view])
    view.zero_()  # the caller reusing its buffer must not change what was stored
    stored = cache.get("k")[0]
    assert torch.equal(stored, torch.arange(10.0, 20.0))
    assert stored.untyped_storage().nbytes() == 40  # its own storage, not the 400-byte buffer


def test_spill_to_safetensors_and_restart(tmp_path: Path) -> None:
    cache = DocumentStateCache(tmp_path, max_bytes=100, max_disk_bytes=10_000)
    for i in range(5):
        cache.put(f"key{i}", [tensor(10, float(i)), tensor(3, -float(i))])  # 52 bytes each
    # Memory holds the newest one; the rest went to disk as safetensors, nothing else.
    assert cache.nbytes == 52 and cache.stats()["disk_entries"] == 4
    files = sorted(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".safetensors"] * 4
    assert torch.equal(load_file(str(files[0]))["0"], tensor(10, float(int(files[0].stem[-1]))))
    got = cache.get("key1")
    assert torch.equal(got[0], tensor(10, 1.0)) and torch.equal(got[1], tensor(3, -1.0))
    assert cache.disk_hits == 1
    cache.flush()  # whatever is only in memory goes to disk too
    # A new process (a resumed run) finds every entry on disk.
    again = DocumentStateCache(tmp_path, max_bytes=0)
    assert len(again) == 5
    for i in range(5):
        assert torch.equal(again.get(f"key{i}")[0], tensor(10, float(i)))
    assert again.disk_hits == 5 and again.misses == 0


def test_disk_bound_and_damaged_files(tmp_path: Path) -> None:
    cache = DocumentStateCache(tmp_path, max_bytes=0, max_disk_bytes=2_000)
    for i in range(20):
        cache.put(f"k{i:02d}", [tensor(50, float(i))])  # files of about 330 bytes
    assert 0 < cache.disk_bytes <= 2_000
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) == cache.disk_bytes
    assert "k00" not in cache and all(f"k{i}" in cache for i in range(16, 20))  # the oldest were deleted
    # A truncated file, and a file renamed to another key, are misses (and are removed), never wrong data.
    path = tmp_path / "k19.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    os.replace(tmp_path / "k18.safetensors", tmp_path / "k17.safetensors")
    again = DocumentStateCache(tmp_path, max_bytes=0)
    assert again.get("k19") is None and not path.exists()
    assert again.get("k17") is None and again.misses == 2
    assert torch.equal(again.get("k16")[0], tensor(50, 16.0))


def test_bounds_are_validated(tmp_path: Path) -> None:
    for kwargs in ({"max_bytes": -1}, {"max_disk_bytes": 1.5}, {"max_bytes": True}):
        with pytest.raises(ValueError, match="max_"):
            DocumentStateCache(tmp_path, **kwargs)


def test_concurrent_use_respects_the_bounds(tmp_path: Path) -> None:
    cache = DocumentStateCache(tmp_path, max_bytes=2_000, max_disk_bytes=20_000)

    def work(worker: int) -> None:
        for i in range(60):
            key = f"k{(worker * 7 + i) % 40}"
            got = cache.get(key)
            if got is None:
                cache.put(key, [tensor(25, float(int(key[1:])))])
            else:
                assert torch.equal(got[0], tensor(25, float(int(key[1:]))))
            assert cache.nbytes <= 2_000

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))  # re-raises a worker's failure here
    assert cache.nbytes <= 2_000 and cache.disk_bytes <= 20_000
    assert sum(f.stat().st_size for f in tmp_path.glob("*.safetensors")) == cache.disk_bytes


def test_entry_keys_and_fingerprints() -> None:
    assert entry_key("fp", "doc", [1, 2, 3]) == entry_key("fp", "doc", (1, 2, 3))
    assert entry_key("fp", "doc", [1, 2, 3]) != entry_key("fp", "doc", [1, 2, 4])
    assert entry_key("fp", "doc", [1]) != entry_key("fp2", "doc", [1]) != entry_key("fp", "prefix", [1])
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    first = model_fingerprint(model)
    with torch.no_grad():
        model.weight[0, 0] += 1e-6
    assert model_fingerprint(model) != first


# ---------------------------------------------------------------------------------------------- readers


def loss_and_grad(reader: Any, batch: Any, log_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = log_mask.clone().requires_grad_(True)
    loss = reader.answer_loss(batch, mask)
    loss.sum().backward()
    return loss.detach(), mask.grad


def check_equal_with_and_without_cache(make: Callable[..., Any], tmp_path: Path) -> None:
    plain = make()
    cache = DocumentStateCache(tmp_path / "states", max_bytes=2**30)
    cached = make(state_cache=cache)
    log_mask = torch.tensor([[-0.2, -1.5, -0.7], [-0.1, -2.0, float("-inf")], [-1.0, -0.3, -0.6]])
    reference = plain.prepare(QUESTIONS, DOCUMENTS, ANSWERS)
    expected = loss_and_grad(plain, reference, log_mask)
    for epoch in range(2):  # epoch 0 fills the cache, epoch 1 reads it from memory
        got = loss_and_grad(cached, cached.prepare(QUESTIONS, DOCUMENTS, ANSWERS), log_mask)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=0, msg=f"epoch {epoch}")
    assert cache.hits > 0
    # A resumed run: a fresh cache on the same directory, everything read from disk.
    cache.flush()
    from_disk = DocumentStateCache(tmp_path / "states", max_bytes=0)
    cached.state_cache = from_disk
    got = loss_and_grad(cached, cached.prepare(QUESTIONS, DOCUMENTS, ANSWERS), log_mask)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    assert from_disk.misses == 0 and from_disk.disk_hits > 0


def test_decoder_reader_cached_states_give_the_same_loss_and_gradient(
    tiny_reader_dir: Path, tmp_path: Path
) -> None:
    check_equal_with_and_without_cache(
        lambda **kw: load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=12, **kw), tmp_path
    )


def test_sliding_window_reader_cached_states_give_the_same_loss(
    tiny_reader_dir: Path, tmp_path: Path
) -> None:
    check_equal_with_and_without_cache(lambda **kw: gemma3_reader(tiny_reader_dir, **kw), tmp_path)


def test_fid_reader_cached_states_give_the_same_loss(tmp_path: Path) -> None:
    check_equal_with_and_without_cache(lambda **kw: fid_reader(tmp_path, **kw), tmp_path)


def count_encoded(reader: DecoderReader) -> list[int]:
    """Spy on the documents the reader really encodes (the number per call)."""
    counts: list[int] = []
    real = reader._encode_documents

    def spy(docs: list[list[int]], prefix_kv: Any) -> Any:
        counts.append(len(docs))
        return real(docs, prefix_kv)

    reader._encode_documents = spy  # type: ignore[method-assign]
    return counts


def test_each_distinct_document_is_encoded_once(tiny_reader_dir: Path) -> None:
    reader = load_reader(str(tiny_reader_dir), device="cpu", state_cache=DocumentStateCache(max_bytes=2**30))
    encoded = count_encoded(reader)
    for _ in range(3):  # three epochs
        for q, docs, a in zip(QUESTIONS, DOCUMENTS, ANSWERS, strict=True):
            reader.prepare([q], [docs], [a])
    assert sum(encoded) == len(CORPUS)  # 8 document slots over 3 questions, 5 distinct documents, once
    plain = load_reader(str(tiny_reader_dir), device="cpu")
    plain_encoded = count_encoded(plain)
    plain.prepare(QUESTIONS, DOCUMENTS, ANSWERS)
    assert plain_encoded == [len(CORPUS)]  # without a cache, repeats within one batch are shared too


def test_a_changed_reader_never_hits_a_stale_entry(tiny_reader_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "shared-states"  # one directory for every variant: keys must keep them apart
    args = (QUESTIONS[:1], DOCUMENTS[:1], ANSWERS[:1])
    zeros = torch.zeros(1, 3)

    def cached(**kwargs: Any) -> DecoderReader:
        cache = DocumentStateCache(directory, max_bytes=0)  # memory off: every hit comes from disk
        return load_reader(str(tiny_reader_dir), device="cpu", state_cache=cache, **kwargs)

    def check_fresh(reader: DecoderReader, uncached: DecoderReader) -> None:
        hits = reader.state_cache.disk_hits
        loss = reader.answer_loss(reader.prepare(*args), zeros)
        assert reader.state_cache.disk_hits == hits  # nothing reused
        expected = uncached.answer_loss(uncached.prepare(*args), zeros)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)

    first = cached(max_document_tokens=12)
    first.prepare(*args)
    assert first.state_cache.misses == 4  # the prefix and three documents
    same = cached(max_document_tokens=12)
    same.prepare(*args)
    assert same.state_cache.disk_hits == 4  # the same reader does reuse them

    def plain(**kwargs: Any) -> DecoderReader:
        return load_reader(str(tiny_reader_dir), device="cpu", **kwargs)

    check_fresh(cached(max_document_tokens=10), plain(max_document_tokens=10))
    check_fresh(
        cached(max_document_tokens=12, dtype=torch.float64),
        plain(max_document_tokens=12, dtype=torch.float64),
    )
    model, tokenizer = first.model, first.tokenizer
    other_prompt = {"device": "cpu", "max_document_tokens": 12, "instruction": "Read, then answer."}
    check_fresh(
        DecoderReader(
            model, tokenizer, state_cache=DocumentStateCache(directory, max_bytes=0), **other_prompt
        ),
        DecoderReader(model, tokenizer, **other_prompt),
    )
    # Weights changed in place after the fingerprint was taken: the version counters move, so it is retaken.
    with torch.no_grad():
        same.model.get_input_embeddings().weight.mul_(1.5)
    check_fresh(same, DecoderReader(same.model, same.tokenizer, device="cpu", max_document_tokens=12))


def test_concurrent_prepare_equals_serial(tiny_reader_dir: Path, tmp_path: Path) -> None:
    reader = load_reader(
        str(tiny_reader_dir), device="cpu", state_cache=DocumentStateCache(tmp_path, max_bytes=50_000)
    )
    serial = [
        reader.answer_loss(reader.prepare([q], [d], [a]), torch.zeros(1, len(d)))
        for q, d, a in zip(QUESTIONS, DOCUMENTS, ANSWERS, strict=True)
    ]

    def work(i: int) -> torch.Tensor:
        j = i % 3
        batch = reader.prepare([QUESTIONS[j]], [DOCUMENTS[j]], [ANSWERS[j]])
        return reader.answer_loss(batch, torch.zeros(1, len(DOCUMENTS[j])))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, loss in enumerate(results):
        torch.testing.assert_close(loss, serial[i % 3], rtol=1e-5, atol=0)
    assert reader.state_cache.nbytes <= 50_000
