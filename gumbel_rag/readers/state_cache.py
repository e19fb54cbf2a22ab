"""A bounded, thread-safe cache of a reader's per-document states, spilling to safetensors files on disk.

A reader's document keys/values (FiD: a passage's encoder states) depend on the reader, its prompt and
the document's tokens, never on the reranker or the mask. Across epochs, and across questions that
share a document (logs mined from one corpus repeat documents a lot), they are the same tensors, so
each distinct document is encoded once. Entries are keyed by :func:`entry_key`: a SHA-256 over the
reader's fingerprint (its weights, config, dtype, device, prompt prefix, document bound) and the
document's token ids, so a change of any of those can never hit a stale entry, and a directory can be
shared by several runs or readers. Files are safetensors (never pickle), written to a temporary name and
renamed; a file that does not parse, or whose stored key differs, is a miss and is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEFAULT_STATE_CACHE_DISK_BYTES",
    "DEFAULT_STATE_CACHE_MEMORY_BYTES",
    "DocumentStateCache",
    "entry_key",
    "model_fingerprint",
    "weights_signature",
]

DEFAULT_STATE_CACHE_MEMORY_BYTES = 2 * 2**30
DEFAULT_STATE_CACHE_DISK_BYTES = 20 * 2**30
_FORMAT = "gumbel-rag-document-states-1"
_SUFFIX = ".safetensors"
_HASH_BLOCK = 16 * 2**20


def entry_key(fingerprint: str, kind: str, ids: Sequence[int]) -> str:
    """The cache key of one entry: SHA-256 of the reader fingerprint, the entry kind and the token ids."""
    digest = hashlib.sha256(f"{_FORMAT}\0{fingerprint}\0{kind}\0".encode())
    digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    return digest.hexdigest()


def weights_signature(model: torch.nn.Module) -> Hashable:
    """Cheap identity of a model's current weights: each tensor's object, storage, dtype and version.

    In-place updates bump a tensor's version counter, ``.to()`` and re-assignment change the storage,
    so any change of the weights changes the signature (without reading them).
    """
    return tuple(
        (name, id(t), t.data_ptr(), t.dtype, t.device, t._version)
        for name, t in model.state_dict(keep_vars=True).items()
    )


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's config, and of the names, dtypes, shapes and bytes of its weights."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    digest.update(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        flat = tensor.detach().reshape(-1).contiguous()
        if flat.numel() == 0:
            continue
        raw = flat.view(torch.uint8)
        # In blocks: a CUDA tensor is copied to the host a block at a time, never whole.
        for start in range(0, raw.numel(), _HASH_BLOCK):
            digest.update(raw[start : start + _HASH_BLOCK].cpu().numpy().tobytes())
    return digest.hexdigest()


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _check_bound(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (bytes), got {value!r}")
    return value


class DocumentStateCache:
    """LRU cache key -> list of tensors, ``max_bytes`` in memory, spilling to ``directory`` on disk.

    Memory holds at most ``max_bytes`` of tensor storage (on the reader's device); the least recently
    used entries beyond it are written to ``directory`` (when given) as safetensors files, which hold
    at most ``max_disk_bytes`` (least recently used files deleted first). Without a directory, evicted
    entries are dropped. A hit on disk is read back into memory. Stored tensors are private copies: a
    caller may not modify what :meth:`get` returns, and :meth:`put` copies what it is given.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        max_bytes: int = DEFAULT_STATE_CACHE_MEMORY_BYTES,
        max_disk_bytes: int = DEFAULT_STATE_CACHE_DISK_BYTES,
    ) -> None:
        """An empty cache (the files already in ``directory`` are indexed: a restarted run reuses them)."""
        self.max_bytes = _check_bound(max_bytes, "max_bytes")
        self.max_disk_bytes = _check_bound(max_disk_bytes, "max_disk_bytes")
        self.directory = None if directory is None else Path(directory).expanduser()
        self._memory: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._nbytes = 0
        self._disk: OrderedDict[str, int] = OrderedDict()
        self._disk_bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._index_directory()

    # ------------------------------------------------------------------------------------------ state

    def __len__(self) -> int:
        """Entries held in memory or on disk."""
        with self._lock:
            return len(self._memory.keys() | self._disk.keys())

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held in memory or on disk (does not count as a use)."""
        with self._lock:
            return key in self._memory or key in self._disk

    @property
    def nbytes(self) -> int:
        """Tensor bytes held in memory (never above ``max_bytes``)."""
        return self._nbytes

    @property
    def disk_bytes(self) -> int:
        """Bytes of the files held on disk (never above ``max_disk_bytes``)."""
        return self._disk_bytes

    def stats(self) -> dict[str, int]:
        """Hits (memory and disk), misses, entries and bytes, for logs and benchmarks."""
        with self._lock:
            return {
                "hits": self.hits,
                "disk_hits": self.disk_hits,
                "misses": self.misses,
                "memory_entries": len(self._memory),
                "memory_bytes": self._nbytes,
                "disk_entries": len(self._disk),
                "disk_bytes": self._disk_bytes,
            }

    def __repr__(self) -> str:
        """Bounds, fill and hit counts."""
        return (
            f"DocumentStateCache(memory={self._nbytes}/{self.max_bytes} bytes, "
            f"disk={self._disk_bytes}/{self.max_disk_bytes} bytes at {self.directory}, "
            f"hits={self.hits}, disk_hits={self.disk_hits}, misses={self.misses})"
        )

    def clear(self) -> None:
        """Drop every entry, in memory and the files on disk (the counters are kept)."""
        with self._lock:
            self._memory.clear()
            self._sizes.clear()
            self._nbytes = 0
            doomed = list(self._disk)
            self._disk.clear()
            self._disk_bytes = 0
        for key in doomed:
            self._path(key).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ use

    def get(self, key: str, device: str | torch.device | None = None) -> list[torch.Tensor] | None:
        """The tensors stored under ``key`` (read from disk onto ``device`` if spilled), or None."""
        with self._lock:
            tensors = self._memory.get(key)
            if tensors is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return tensors
            on_disk = key in self._disk
            if on_disk:
                self._disk.move_to_end(key)
        tensors = self._read(key, device) if on_disk else None
        with self._lock:
            if tensors is None:
                self.misses += 1
                return None
            self.disk_hits += 1
        self._insert(key, tensors, on_disk=True)
        return tensors

    def put(self, key: str, tensors: Sequence[torch.Tensor]) -> None:
        """Store copies of ``tensors`` under ``key`` (evicting, and spilling, least recently used entries)."""
        copies = [t.detach().clone(memory_format=torch.contiguous_format) for t in tensors]
        self._insert(key, copies, on_disk=False)

    def flush(self) -> None:
        """Write every entry held only in memory to disk (no-op without a directory)."""
        if self.directory is None:
            return
        with self._lock:
            pending = [(k, v) for k, v in self._memory.items() if k not in self._disk]
        self._spill(pending)

    # ------------------------------------------------------------------------------------------ internals

    def _insert(self, key: str, tensors: list[torch.Tensor], on_disk: bool) -> None:
        size = _nbytes(tensors)
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return
            victims: list[tuple[str, list[torch.Tensor]]] = []
            if size > self.max_bytes:
                victims.append((key, tensors))  # too big for memory: straight to disk
            else:
                self._memory[key] = tensors
                self._sizes[key] = size
                self._nbytes += size
                while self._nbytes > self.max_bytes:
                    old, old_tensors = self._memory.popitem(last=False)
                    self._nbytes -= self._sizes.pop(old)
                    victims.append((old, old_tensors))
            victims = [(k, v) for k, v in victims if k not in self._disk and not (on_disk and k == key)]
        self._spill(victims)

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}{_SUFFIX}"

    def _spill(self, entries: list[tuple[str, list[torch.Tensor]]]) -> None:
        if self.directory is None or not entries:
            return
        from safetensors.torch import save

        written: list[tuple[str, int]] = []
        for key, tensors in entries:
            payload = save(
                {str(i): t.detach().to("cpu").contiguous() for i, t in enumerate(tensors)},
                metadata={"format": _FORMAT, "key": key, "count": str(len(tensors))},
            )
            if len(payload) > self.max_disk_bytes:
                continue
            # A temporary name and a rename: a reader of the directory never sees half a file. No fsync:
            # a file torn by a crash fails to parse and is then a miss, never wrong states.
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                os.replace(tmp, self._path(key))
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                continue  # a full or read-only disk loses the spill, not the run
            written.append((key, len(payload)))
        self._register(written)

    def _register(self, files: list[tuple[str, int]]) -> None:
        doomed: list[str] = []
        with self._lock:
            for key, size in files:
                if key in self._disk:
                    self._disk_bytes -= self._disk.pop(key)
                self._disk[key] = size
                self._disk_bytes += size
            while self._disk_bytes > self.max_disk_bytes and self._disk:
                old, old_size = self._disk.popitem(last=False)
                self._disk_bytes -= old_size
                doomed.append(old)
        for key in doomed:
            with contextlib.suppress(OSError):
                self._path(key).unlink()

    def _read(self, key: str, device: str | torch.device | None) -> list[torch.Tensor] | None:
        from safetensors import SafetensorError, safe_open

        path = self._path(key)
        target = "cpu" if device is None else str(torch.device(device))
        try:
            with safe_open(str(path), framework="pt", device=target) as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != _FORMAT or meta.get("key") != key:
                    raise ValueError("not this entry")
                tensors = [fh.get_tensor(str(i)) for i in range(int(meta["count"]))]
        except (OSError, ValueError, KeyError, SafetensorError):
            with self._lock:
                if key in self._disk:
                    self._disk_bytes -= self._disk.pop(key)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return tensors

    def _index_directory(self) -> None:
        assert self.directory is not None
        found = []
        for path in self.directory.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                found.append((stat.st_mtime_ns, path.name[: -len(_SUFFIX)], stat.st_size))
        found.sort()
        self._register([(key, size) for _, key, size in found])
