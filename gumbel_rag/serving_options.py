"""The serving options of the reranker, defined and validated once for the core and the three integrations.

:class:`ServingOptions` holds every option a user can set on ``GumbelRerank`` (LangChain, LlamaIndex)
or ``GumbelRanker`` (Haystack): what to load (model, kind, device, max length, backend, cache bounds,
transformers kwargs, remote code, hub options) and how to rank (batch size, top-n, score threshold,
score scaling). :func:`check_option` is the one rule per option; its errors name the option the way the
caller spells it (``label``: ``top_k`` in Haystack for the core's ``top_n``). Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from gumbel_rag.errors import ConfigError
from gumbel_rag.hub import HubOptions, trust_gate

__all__ = [
    "BACKENDS",
    "KINDS",
    "LOAD_OPTIONS",
    "OPTION_NAMES",
    "TRUNCATED_KEY",
    "Backend",
    "ServingOptions",
    "check_option",
]

Backend = Literal["torch", "openvino"]
"""Inference backends: ``"torch"`` (exact, trainable) or ``"openvino"`` (compiled, CPU, inference only)."""
BACKENDS: tuple[str, ...] = ("torch", "openvino")
KINDS: tuple[str, ...] = ("auto", "bi-encoder", "cross-encoder")

# Metadata key the integrations set to True on a returned document whose input was truncated.
TRUNCATED_KEY = "truncated"

# The options whose change needs the model loaded again (batch size and the ranking rules do not).
LOAD_OPTIONS = (
    "model",
    "kind",
    "device",
    "max_length",
    "backend",
    "cache_max_entries",
    "cache_max_bytes",
    "model_kwargs",
    "tokenizer_kwargs",
    "config_kwargs",
    "trust_remote_code",
    "local_files_only",
    "revision",
    "token",
    "cache_folder",
)


def _positive_int(value: Any, label: str, *, none: str | None) -> int | None:
    # bool is an int to Python, but top_n=True is a mistake, not "keep one"; 3.0 or "3" is refused too.
    if value is None and none is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        also = f" or None ({none})" if none is not None else ""
        raise ConfigError(f"{label} must be a positive integer{also}, got {value!r}")
    return value


def _threshold(value: Any, label: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{label} must be a finite number or None (no threshold), got {value!r}")
    return float(value)


def _choice(value: Any, label: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{label} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _backend(value: Any, label: str) -> str:
    if value == "onnx":
        # Stock sentence-transformers rankers take "onnx"; a saved pipeline may say so.
        raise ConfigError(
            f"{label}='onnx' is not supported: gumbel-rag runs 'torch' (exact, trainable) or 'openvino' (its "
            "own compiled CPU path with the same scores); sentence-transformers' ONNX export goes through "
            "optimum, which this project's transformers version is past. Use 'openvino' or 'torch'"
        )
    return _choice(value, label, BACKENDS)


def _flag(value: Any, label: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{label} must be True or False, got {value!r}")
    return value


def _kwargs(value: Any, label: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{label} must be a dict or None, got {type(value).__name__}")
    return dict(value)


def _model(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{label} must be a model name or path, or None (the default), got {value!r}")
    return value


def _device(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{label} must be a torch device string such as 'cpu' or 'cuda:0', got {value!r}")
    return value


def _optional_str(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{label} must be a non-empty string or None, got {value!r}")
    return value


def _token(value: Any, label: str) -> str | bool | None:
    if value is None or isinstance(value, str | bool):
        return value
    raise ConfigError(f"{label} must be a string, a bool or None, got {type(value).__name__}")


_RULES: dict[str, Any] = {
    "model": _model,
    "kind": lambda v, label: _choice(v, label, KINDS),
    "device": _device,
    "batch_size": lambda v, label: _positive_int(v, label, none=None),
    "max_length": lambda v, label: _positive_int(v, label, none="the model's own limit"),
    "backend": lambda v, label: _backend(v, label),
    "cache_max_entries": lambda v, label: _positive_int(v, label, none="no bound"),
    "cache_max_bytes": lambda v, label: _positive_int(v, label, none="no bound"),
    "model_kwargs": _kwargs,
    "tokenizer_kwargs": _kwargs,
    "config_kwargs": _kwargs,
    "trust_remote_code": _flag,
    "local_files_only": _flag,
    "revision": _optional_str,
    "token": _token,
    "cache_folder": _optional_str,
    "top_n": lambda v, label: _positive_int(v, label, none="keep all"),
    "score_threshold": _threshold,
    "scale_score": _flag,
}


def check_option(name: str, value: Any, *, label: str | None = None) -> Any:
    """Validate one serving option by its core ``name``; errors name it ``label`` (the caller's spelling).

    Returns the value normalised (a path as text, a mapping as a dict). Raises ConfigError.
    """
    return _RULES[name](value, label or name)


@dataclass(frozen=True)
class ServingOptions:
    """Every serving option, validated together; ``spelling`` maps core names to the caller's names.

    ``load_key()`` is what a loaded model depends on: a change in it needs the model loaded again.
    """

    model: str | None = None
    kind: str = "auto"
    device: str | None = None
    batch_size: int = 32
    max_length: int | None = None
    backend: str = "torch"
    cache_max_entries: int | None = None
    cache_max_bytes: int | None = None
    model_kwargs: dict[str, Any] | None = None
    tokenizer_kwargs: dict[str, Any] | None = None
    config_kwargs: dict[str, Any] | None = None
    trust_remote_code: bool = False
    local_files_only: bool = False
    revision: str | None = None
    token: str | bool | None = field(default=None, repr=False)
    cache_folder: str | None = None
    top_n: int | None = 3
    score_threshold: float | None = None
    scale_score: bool = False
    spelling: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Validate each option, then the combinations (remote code, cache on a cross-encoder)."""
        for f in fields(self):
            if f.name in _RULES:
                value = check_option(f.name, getattr(self, f.name), label=self.label(f.name))
                object.__setattr__(self, f.name, value)
        trust_gate(
            self.trust_remote_code,
            **{
                self.label(name): getattr(self, name)
                for name in ("model_kwargs", "tokenizer_kwargs", "config_kwargs")
            },
        )
        if self.kind == "cross-encoder" and (
            self.cache_max_entries is not None or self.cache_max_bytes is not None
        ):
            raise ConfigError(
                f"{self.label('cache_max_entries')} / {self.label('cache_max_bytes')} need a bi-encoder: the "
                "embedding cache stores per-document embeddings, and a cross-encoder scores each (query, "
                "document) pair jointly"
            )
        if self.backend == "openvino" and self.device not in (None, "cpu"):
            raise ConfigError(
                f"backend='openvino' runs on the CPU, got {self.label('device')}={self.device!r}; "
                "use device='cpu' (or None), or backend='torch'"
            )

    def label(self, name: str) -> str:
        """The caller's name for core option ``name``."""
        return self.spelling.get(name, name)

    @property
    def hub(self) -> HubOptions:
        """The hub options (local_files_only, revision, token, cache_folder)."""
        return HubOptions(self.local_files_only, self.revision, self.token, self.cache_folder)

    def load_key(self) -> tuple[Any, ...]:
        """The options a loaded model depends on, comparable (dict values by their repr)."""
        return tuple(
            repr(sorted(value.items())) if isinstance(value, dict) else value
            for value in (getattr(self, name) for name in LOAD_OPTIONS)
        )

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``GumbelReranker.from_pretrained`` (the model name excluded)."""
        kwargs = {name: getattr(self, name) for name in LOAD_OPTIONS if name != "model"}
        return {**kwargs, "batch_size": self.batch_size}


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ServingOptions) if f.name != "spelling")
"""Every serving option by its core name (the integrations take each, ``top_n`` spelt their way)."""
