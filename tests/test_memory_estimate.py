"""The memory table's numbers for the default reader match the real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from gumbel_rag.testing import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "memory_estimate.py"


def _module():
    return load_script(SCRIPT)


@pytest.mark.slow
def test_default_reader_numbers_match_the_loaded_model() -> None:
    from gumbel_rag.readers import load_reader

    arch = _module().READERS[0]
    reader = load_reader(device="cpu")
    config = reader.model.config
    assert arch.layers == config.num_hidden_layers
    assert arch.kv_heads == config.num_key_value_heads
    assert arch.head_dim == config.hidden_size // config.num_attention_heads
    n_params = sum(p.numel() for p in reader.model.parameters())
    assert abs(n_params - arch.params) / n_params < 0.01


def test_table_grows_with_the_reader() -> None:
    est = _module()
    rows = est.rows(candidates=10, doc_tokens=128, batch=4)
    totals = [total for *_, total in rows]
    assert len(rows) == len(est.READERS)
    assert totals[0] < 1.0 < totals[-1]
    by_name = {r[0]: r for r in rows}
    llama = next(v for k, v in by_name.items() if k.startswith("Llama-2-7B"))
    mistral = next(v for k, v in by_name.items() if k.startswith("Mistral-7B"))
    # Llama-2-7B (32 KV heads) caches 4x what Mistral-7B (8 KV heads) does per token.
    assert llama[2] == pytest.approx(4 * mistral[2])
