"""Models from the Hugging Face Hub, the way transformers and sentence-transformers load them.

A hub name (``"BAAI/bge-reranker-base"``) is downloaded into the standard Hugging Face cache on first
use, through ``huggingface_hub``, unless downloads are off: ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``
in the environment, or ``local_files_only=True``. ``revision``, ``token`` and ``cache_folder`` pass through
to every download. A local directory is used as it is, and the packaged defaults never touch the network.

This module also holds the one decision on running a model's own Python code (:func:`trust_gate`): only
``trust_remote_code`` itself can allow it, never a nested ``model_kwargs={"trust_remote_code": True}``.
Every loader (the reranker, the reader, the three integrations, the CLI) goes through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gumbel_rag.errors import ConfigError, ModelLoadError

__all__ = [
    "HubOptions",
    "describe_load_error",
    "downloads_disabled",
    "fetch_model_files",
    "is_hub_name",
    "trust_gate",
]

# The keyword-argument dicts a caller may hand to the model loaders; none may decide trust_remote_code.
KWARGS_NAMES = ("model_kwargs", "tokenizer_kwargs", "config_kwargs")


@dataclass(frozen=True)
class HubOptions:
    """Where and how hub models are fetched: the options every gumbel-rag loader accepts.

    ``local_files_only``: never download, use the local cache only (as ``HF_HUB_OFFLINE=1`` does).
    ``revision``: a branch, tag or commit of the hub repository. ``token``: a Hugging Face access token for
    private or gated models (``None``: ``HF_TOKEN`` or the ``hf auth login`` token, as huggingface_hub
    decides). ``cache_folder``: the cache directory (``None``: the standard ``~/.cache/huggingface/hub``).
    """

    local_files_only: bool = False
    revision: str | None = None
    token: str | bool | None = None
    cache_folder: str | None = None

    def __post_init__(self) -> None:
        """Check the types (a YAML ``"false"`` string must not pass for a bool)."""
        if not isinstance(self.local_files_only, bool):
            raise ConfigError(f"local_files_only must be True or False, got {self.local_files_only!r}")
        for name in ("revision", "cache_folder"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            elif value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name} must be a non-empty string or None, got {value!r}")
        if self.token is not None and not isinstance(self.token, str | bool):
            raise ConfigError(f"token must be a string, a bool or None, got {type(self.token).__name__}")

    def sentence_transformers_kwargs(self) -> dict[str, Any]:
        """The keyword arguments ``SentenceTransformer`` / ``CrossEncoder`` take for these options."""
        return {
            "local_files_only": self.local_files_only,
            "revision": self.revision,
            "token": self.token,
            "cache_folder": self.cache_folder,
        }

    def transformers_kwargs(self) -> dict[str, Any]:
        """The keyword arguments transformers' ``from_pretrained`` takes (``cache_dir`` for the cache)."""
        return {
            "local_files_only": self.local_files_only,
            "revision": self.revision,
            "token": self.token,
            "cache_dir": self.cache_folder,
        }


def trust_gate(
    trust_remote_code: object, **kwargs_dicts: Mapping[str, Any] | None
) -> tuple[bool, dict[str, dict[str, Any] | None]]:
    """The one decision on running a model's own code: ``trust_remote_code``, checked against nested kwargs.

    ``kwargs_dicts`` are the dicts a loader forwards (``model_kwargs=..., config_kwargs=...``). One that
    sets ``trust_remote_code`` differently from the argument itself is refused with a ConfigError (it would
    otherwise override it inside transformers); an equal value is dropped. Returns the decision and copies
    of the dicts without the key.
    """
    if not isinstance(trust_remote_code, bool):
        raise ConfigError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    cleaned: dict[str, dict[str, Any] | None] = {}
    for name, kwargs in kwargs_dicts.items():
        if kwargs is None:
            cleaned[name] = None
            continue
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"{name} must be a dict or None, got {type(kwargs).__name__}")
        nested = kwargs.get("trust_remote_code", trust_remote_code)
        if nested is not trust_remote_code:
            raise ConfigError(
                f"{name} sets trust_remote_code={nested!r} but trust_remote_code={trust_remote_code!r}: "
                f"remove it from {name}; only trust_remote_code=True itself lets a model run its own code "
                "(use it only for models you trust)"
            )
        cleaned[name] = {k: v for k, v in kwargs.items() if k != "trust_remote_code"}
    return trust_remote_code, cleaned


def downloads_disabled(options: HubOptions) -> str | None:
    """Why nothing may be downloaded (the flag that says so), or None when downloads are allowed."""
    if options.local_files_only:
        return "local_files_only=True"
    from huggingface_hub import constants

    # huggingface_hub reads the variables once, at import; the environment may say so too.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}=1"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1"
    return None


def is_hub_name(name: str) -> bool:
    """Whether ``name`` can be a hub repository id (``"name"`` or ``"org/name"``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def fetch_model_files(name: str, filenames: tuple[str, ...], options: HubOptions) -> dict[str, Path]:
    """Download (or find in the cache) those of ``filenames`` that the hub repository ``name`` has.

    Returns filename -> local path for the files that exist. Raises ModelLoadError (one line: the model
    and what was tried) when the repository cannot be had at all.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    found: dict[str, Path] = {}
    missing_locally: BaseException | None = None
    for filename in filenames:
        try:
            path = hf_hub_download(
                name,
                filename,
                revision=options.revision,
                token=options.token,
                cache_dir=options.cache_folder,
                local_files_only=options.local_files_only,
            )
        except LocalEntryNotFoundError as exc:
            if downloads_disabled(options) is None:
                # Online, this means the hub could not be reached (after huggingface_hub's retries):
                # trying the next file would only wait as long again.
                raise ModelLoadError(describe_load_error(name, exc, options)) from exc
            # Offline and not cached, or offline and the repository has no such file: told apart below.
            missing_locally = exc
            continue
        except EntryNotFoundError:
            continue  # the repository exists but has no such file
        except Exception as exc:
            raise ModelLoadError(describe_load_error(name, exc, options)) from exc
        found[filename] = Path(path)
    if not found:
        if missing_locally is not None:
            raise ModelLoadError(describe_load_error(name, missing_locally, options)) from missing_locally
        raise ModelLoadError(
            f"model {name!r} on the Hugging Face Hub has none of {', '.join(filenames)}: "
            "not a sentence-transformers or transformers model repository"
        )
    return found


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def describe_load_error(name: str, exc: BaseException, options: HubOptions) -> str:
    """One line saying why hub model ``name`` could not be loaded and what was tried."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = _chain(exc)
    endpoint = constants.ENDPOINT
    cache = options.cache_folder or constants.HF_HUB_CACHE
    revision = f" at revision {options.revision!r}" if options.revision else ""
    disabled = downloads_disabled(options)

    def has(kind: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
        return any(isinstance(e, kind) for e in chain)

    if has(GatedRepoError):
        return (
            f"model {name!r} is gated on the Hugging Face Hub ({constants.ENDPOINT}): accept its terms on "
            "the model page, then pass token= (or --token, or set HF_TOKEN, or run `hf auth login`)"
        )
    if has(RevisionNotFoundError):
        return f"model {name!r} has no revision {options.revision!r} on the Hugging Face Hub ({endpoint})"
    if has(RepositoryNotFoundError):
        return (
            f"model {name!r} was not found on the Hugging Face Hub ({constants.ENDPOINT}) nor as a local "
            "directory: check the name, or pass token= for a private repository"
        )
    if disabled is not None:
        return (
            f"model {name!r}{revision} is not a local directory and not in the Hugging Face cache ({cache}), "
            f"and downloads are off ({disabled}); download it once with `hf download {name}`, or allow "
            "downloads (unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, drop local_files_only or "
            "--local-files-only)"
        )
    if has(
        (ConnectionError, TimeoutError, LocalEntryNotFoundError, OfflineModeIsEnabled)
    ) or _is_network_error(chain):
        return (
            f"could not reach the Hugging Face Hub ({endpoint}) to download model {name!r}{revision}, "
            f"and it is not in the Hugging Face cache ({cache}): check the network connection, or set "
            "HF_HUB_OFFLINE=1 to use cached models only"
        )
    detail = " ".join(str(exc).split())
    return f"cannot load model {name!r}{revision}: {type(exc).__name__}: {detail}"


def _is_network_error(chain: list[BaseException]) -> bool:
    # httpx (huggingface_hub >= 1.0) and requests raise their own connection errors.
    names = {type(e).__name__ for e in chain}
    return bool(names & {"ConnectError", "ConnectTimeout", "ReadTimeout", "NetworkError", "ProxyError"})
