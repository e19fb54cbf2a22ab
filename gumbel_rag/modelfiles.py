"""Resolve a model name or path to a local directory and tell bi-encoders from cross-encoders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

__all__ = ["ModelKind", "detect_kind", "resolve_model_dir"]

ModelKind = Literal["bi-encoder", "cross-encoder"]


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Return a local directory for a path, or for a hub name already in the local HF cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; expected a model directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except (HFValidationError, OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"model {str(name_or_path)!r} is neither a local directory nor in the local Hugging Face cache "
            "(gumbel-rag does not download at run time; download it once with `hf download` or pass a path)"
        ) from exc


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf8"))
    except (OSError, json.JSONDecodeError):
        return {}


def detect_kind(path: Path) -> tuple[ModelKind, str]:
    """Tell a bi-encoder from a cross-encoder by its files; returns (kind, the reason)."""
    st_config = _read_json(path / "config_sentence_transformers.json")
    model_type = st_config.get("model_type")
    if model_type == "CrossEncoder":
        return "cross-encoder", "config_sentence_transformers.json says CrossEncoder"
    if model_type == "SentenceTransformer" or (path / "modules.json").is_file():
        return "bi-encoder", "it is a sentence-transformers directory"
    config = _read_json(path / "config.json")
    if not config:
        raise ValueError(f"{path} has no config.json or modules.json: not a Hugging Face model directory")
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder", f"config.json architecture {architectures[0]}"
    return "bi-encoder", "config.json has no sequence-classification head (mean pooling is used)"
