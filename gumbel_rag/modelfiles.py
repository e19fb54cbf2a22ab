"""Find a reranker's files (a local directory or a hub repository); tell bi-encoders from cross-encoders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gumbel_rag.defaults import default_reranker_path
from gumbel_rag.errors import ModelLoadError
from gumbel_rag.hub import HubOptions, fetch_model_files, is_hub_name

__all__ = ["CONFIG_NAME", "KindOption", "ModelKind", "ModelSource", "detect_kind", "locate_model"]

ModelKind = Literal["bi-encoder", "cross-encoder"]
KindOption = Literal["auto", "bi-encoder", "cross-encoder"]
"""A model kind as a user asks for it: ``"auto"`` detects it from the model's files."""

# gumbel-rag's own settings next to a saved model (its kind and score temperature).
CONFIG_NAME = "gumbel_rag.json"
# The small files that tell what a model is; fetched first for a hub name (the weights come later).
KIND_FILES = ("config_sentence_transformers.json", "modules.json", "config.json", CONFIG_NAME)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``name`` goes to sentence-transformers, ``files`` holds its config files."""

    name: str
    files: Path
    is_local: bool
    label: str

    def kind(self) -> tuple[ModelKind, str]:
        """The model's kind and the reason (see :func:`detect_kind`)."""
        return detect_kind(self.files, self.label)

    def saved_config(self) -> dict[str, Any]:
        """gumbel-rag's saved settings (``gumbel_rag.json``), or ``{}`` for any other model."""
        file = self.files / CONFIG_NAME
        if not file.is_file():
            return {}
        try:
            return json.loads(file.read_text(encoding="utf8"))
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{file} is not valid JSON: {exc}") from exc


def locate_model(name_or_path: str | Path | None, hub: HubOptions) -> ModelSource:
    """A local directory as it is; a hub name has its config files fetched (downloaded unless offline).

    ``None`` is the packaged default reranker (no network).
    """
    if name_or_path is None:
        path = default_reranker_path()
        return ModelSource(str(path), path, True, "the default reranker (all-MiniLM-L6-v2)")
    text = str(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return ModelSource(str(path), path, True, text)
    if path.exists():
        raise ModelLoadError(f"model {text!r} is a file; expected a model directory or a Hugging Face name")
    if isinstance(name_or_path, Path) or not is_hub_name(text):
        raise ModelLoadError(
            f"model {text!r}: no such directory, and it is not a Hugging Face Hub name (like 'org/name')"
        )
    files = fetch_model_files(text, KIND_FILES, hub)
    return ModelSource(text, next(iter(files.values())).parent, False, text)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf8"))
    except (OSError, json.JSONDecodeError):
        return {}


def detect_kind(path: Path, label: str | None = None) -> tuple[ModelKind, str]:
    """Tell a bi-encoder from a cross-encoder by its files; returns (kind, the reason)."""
    st_config = _read_json(path / "config_sentence_transformers.json")
    model_type = st_config.get("model_type")
    if model_type == "CrossEncoder":
        return "cross-encoder", "config_sentence_transformers.json says CrossEncoder"
    if model_type == "SentenceTransformer" or (path / "modules.json").is_file():
        return "bi-encoder", "it is a sentence-transformers directory"
    config = _read_json(path / "config.json")
    if not config:
        raise ModelLoadError(
            f"{label or path} has no config.json or modules.json: not a Hugging Face model directory"
        )
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder", f"config.json architecture {architectures[0]}"
    return "bi-encoder", "config.json has no sequence-classification head (mean pooling is used)"
