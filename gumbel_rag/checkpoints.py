"""Training checkpoints: written whole or not at all, tied to the run that wrote them, resumed without pickle.

A checkpoint ``checkpoints/step-N`` holds what Accelerate saves (model, optimizer and RNG states, as
safetensors and ``weights_only`` files), the loop's own state as JSON (``trainer_state.json``: the step,
skipped steps, the scheduler, the best validation score) and safetensors (``noise_rng_<rank>.safetensors``:
the Gumbel noise generator of each process), the run's identity (``run_identity.json``) and, written last,
``manifest.json``: the size and SHA-256 of every file. A checkpoint is *complete* when its manifest
matches its files; anything else (a kill mid-write, a truncated or deleted file, a stray ``step-best``
directory) is skipped with a warning naming what is wrong, and resuming falls back to the newest complete
checkpoint.

The run identity is what decides a run's trajectory: the loop settings that change the optimisation, the
loss and its options, the reader, the starting weights and a fingerprint of the training data. Resuming
refuses a checkpoint of another identity (saying which settings differ), and pruning old checkpoints
touches only the current run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from gumbel_rag.data import QAExample

__all__ = [
    "CHECKPOINT_PREFIX",
    "MANIFEST",
    "RUN_IDENTITY",
    "SAVED_MODEL_FILES",
    "TRAINER_STATE",
    "LoopState",
    "NoiseState",
    "checkpoint_problem",
    "checkpoint_run_id",
    "checkpoint_step",
    "clear_run_artifacts",
    "data_fingerprint",
    "has_saved_model",
    "identity_differences",
    "list_checkpoints",
    "load_checkpoint",
    "newest_complete",
    "run_artifacts",
    "run_id",
    "save_checkpoint",
    "saved_identity",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
RUN_IDENTITY = "run_identity.json"
MANIFEST = "manifest.json"
# gumbel-rag's settings, a sentence-transformers model's modules, its weights: any one marks a saved model.
SAVED_MODEL_FILES = ("gumbel_rag.json", "modules.json", "model.safetensors")
_STEP_DIR = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")
_HASH_CHUNK = 1 << 20


class NoiseState:
    """The Gumbel noise generator, checkpointed so a resumed run draws the same noise."""

    def __init__(self, seed: int) -> None:
        """A CPU generator seeded with ``seed`` (the run's seed plus the process index)."""
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator state as a tensor (saved as safetensors)."""
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generator state."""
        self.generator.set_state(state["rng"])


class LoopState:
    """What must survive a resume besides the weights: steps taken and skipped, the best validation score."""

    def __init__(self) -> None:
        """Start at step 0 with nothing skipped and no validation score yet."""
        self.step = 0
        self.skipped = 0
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.evals_since_best = 0

    def state_dict(self) -> dict[str, Any]:
        """The counters as JSON values."""
        return {
            "step": self.step,
            "skipped": self.skipped,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counters (checkpoints of older versions have only step and skipped)."""
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        self.best_score = state.get("best_score")
        self.best_step = state.get("best_step")
        self.evals_since_best = int(state.get("evals_since_best", 0))


# ----------------------------------------------------------------------------- run identity


def data_fingerprint(examples: Sequence[QAExample]) -> str:
    """SHA-256 of the training rows as the loss sees them (questions, answers, candidates, gold), in order."""
    digest = hashlib.sha256()
    for ex in examples:
        row = [ex.question, ex.answers, [[c.text, c.title, c.id] for c in ex.candidates], ex.gold]
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def weights_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of named tensors' bytes (the starting weights of a run)."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_id(identity: Mapping[str, Any]) -> str:
    """A short, stable id of a run identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable ``"name: saved -> current"`` for every setting that differs (nested keys dotted)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += identity_differences(a, b, f"{name}.")
        elif a != b:
            short = lambda v: v[:12] + "..." if isinstance(v, str) and len(v) > 16 else v  # noqa: E731
            out.append(f"{name}: {short(a)!r} -> {short(b)!r}")
    return out


# ----------------------------------------------------------------------------- what a directory holds


def checkpoint_step(directory: Path) -> int | None:
    """The step N of a ``step-N`` checkpoint directory (None for any other name)."""
    m = _STEP_DIR.match(directory.name)
    return int(m.group(1)) if m else None


def list_checkpoints(root: Path) -> list[Path]:
    """``step-N`` directories under ``root``, oldest first; ``step-best``, temporaries etc. are ignored."""
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf8"))


def checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a complete checkpoint (None when it is): its manifest against its files."""
    manifest_file = directory / MANIFEST
    if not manifest_file.is_file():
        return "no manifest.json (written last, so the checkpoint was never finished)"
    try:
        manifest = _read_json(manifest_file)
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest.json ({exc})"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("size"):
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected.get('size')}"
        if _sha256(path) != expected.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def checkpoint_run_id(directory: Path) -> str | None:
    """The run id recorded in a checkpoint's manifest (None when there is none)."""
    try:
        return _read_json(directory / MANIFEST).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def has_saved_model(output: Path) -> bool:
    """Whether ``output`` holds a saved model (any of SAVED_MODEL_FILES)."""
    return any((output / name).is_file() for name in SAVED_MODEL_FILES)


def run_artifacts(output: Path) -> list[str]:
    """What in ``output`` belongs to an earlier run (a saved model, checkpoints, logs), for a message."""
    found = []
    if has_saved_model(output):
        found.append("a saved model")
    ckpt = output / "checkpoints"
    if ckpt.is_dir() and any(ckpt.iterdir()):
        found.append("checkpoints/")
    if (output / "logs").is_dir() and any((output / "logs").iterdir()):
        found.append("logs/")
    return found


def clear_run_artifacts(output: Path) -> None:
    """Delete an earlier run's checkpoints and logs under ``output`` (the model files are overwritten)."""
    for name in ("checkpoints", "logs"):
        shutil.rmtree(output / name, ignore_errors=True)


# ----------------------------------------------------------------------------- saving and loading


def _save_loop_state(
    directory: Path, accelerator: Accelerator, scheduler: Any, noise: NoiseState, state: LoopState
) -> None:
    """Write the loop's own state as JSON and safetensors, so resuming never unpickles anything."""
    save_file(noise.state_dict(), str(directory / f"noise_rng_{accelerator.process_index}.safetensors"))
    if accelerator.is_main_process:
        payload = {"progress": state.state_dict(), "scheduler": scheduler.state_dict()}
        (directory / TRAINER_STATE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf8")


def _write_manifest(directory: Path, identity: Mapping[str, Any], step: int) -> None:
    files = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    manifest = {"run_id": run_id(identity), "step": step, "files": files}
    with (directory / MANIFEST).open("w", encoding="utf8") as fh:
        fh.write(json.dumps(manifest, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    keep: int,
    scheduler: Any,
    noise: NoiseState,
    state: LoopState,
    identity: Mapping[str, Any],
    *,
    protect: int | None = None,
) -> None:
    """Write ``root/step-N`` (N = ``state.step``), then prune this run's checkpoints to the newest ``keep``.

    ``step-<protect>`` (the best so far, when the run selects one) is never pruned. A collective: every
    process calls it.
    """
    # Write to a temporary name and rename: a kill mid-write never leaves a checkpoint under a final name.
    final = root / f"{CHECKPOINT_PREFIX}{state.step}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{state.step}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    # Every process writes its own noise state; the directory exists on all of them by now.
    _save_loop_state(tmp, accelerator, scheduler, noise, state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / RUN_IDENTITY).write_text(json.dumps(identity, indent=2) + "\n", encoding="utf8")
        _write_manifest(tmp, identity, state.step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        mine = [p for p in list_checkpoints(root) if checkpoint_run_id(p) == run_id(identity)]
        for old in mine[:-keep]:
            if old.name != f"{CHECKPOINT_PREFIX}{protect}":
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(
    directory: Path, accelerator: Accelerator, scheduler: Any, noise: NoiseState, state: LoopState
) -> None:
    """Restore the model, optimizer, RNG states (Accelerate) and the loop's own state from ``directory``."""
    accelerator.load_state(str(directory))
    payload = _read_json(directory / TRAINER_STATE)
    state.load_state_dict(payload["progress"])
    scheduler.load_state_dict(payload["scheduler"])
    noise.load_state_dict(load_file(str(directory / f"noise_rng_{accelerator.process_index}.safetensors")))


def newest_complete(root: Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint under ``root``, and a line for each newer one that was skipped."""
    skipped = []
    for directory in reversed(list_checkpoints(root)):
        problem = checkpoint_problem(directory)
        if problem is None:
            return directory, skipped
        skipped.append(f"{directory.name}: {problem}")
    return None, skipped


def saved_identity(directory: Path) -> dict[str, Any] | None:
    """The run identity a checkpoint was written with (None for checkpoints of older versions)."""
    try:
        return _read_json(directory / RUN_IDENTITY)
    except (OSError, ValueError):
        return None
