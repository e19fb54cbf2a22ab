"""Training checkpoints: written whole or not at all, resumed without unpickling anything.

A checkpoint ``checkpoints/step-N`` holds what Accelerate saves (model, optimizer and RNG states, as
safetensors and ``weights_only`` files) plus the loop's own state as JSON (``trainer_state.json``: the
step, skipped steps, the scheduler) and safetensors (``noise_rng_<rank>.safetensors``: the Gumbel noise
generator of each process).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

__all__ = [
    "CHECKPOINT_PREFIX",
    "TRAINER_STATE",
    "LoopState",
    "NoiseState",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"


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
    """Counters that must survive a resume: optimizer steps taken and steps skipped as non-finite."""

    def __init__(self) -> None:
        """Start at step 0 with nothing skipped."""
        self.step = 0
        self.skipped = 0

    def state_dict(self) -> dict[str, int]:
        """The counters as JSON values."""
        return {"step": self.step, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters."""
        self.step, self.skipped = int(state["step"]), int(state["skipped"])


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete ones never get the final name)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _save_loop_state(
    directory: Path, accelerator: Accelerator, scheduler: Any, noise: NoiseState, state: LoopState
) -> None:
    """Write the loop's own state as JSON and safetensors, so resuming never unpickles anything."""
    save_file(noise.state_dict(), str(directory / f"noise_rng_{accelerator.process_index}.safetensors"))
    if accelerator.is_main_process:
        payload = {"progress": state.state_dict(), "scheduler": scheduler.state_dict()}
        (directory / TRAINER_STATE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf8")


def load_checkpoint(
    directory: Path, accelerator: Accelerator, scheduler: Any, noise: NoiseState, state: LoopState
) -> None:
    """Restore the model, optimizer, RNG states (Accelerate) and the loop's own state from ``directory``."""
    accelerator.load_state(str(directory))
    payload = json.loads((directory / TRAINER_STATE).read_text(encoding="utf8"))
    state.load_state_dict(payload["progress"])
    scheduler.load_state_dict(payload["scheduler"])
    noise.load_state_dict(load_file(str(directory / f"noise_rng_{accelerator.process_index}.safetensors")))


def save_checkpoint(
    accelerator: Accelerator, root: Path, keep: int, scheduler: Any, noise: NoiseState, state: LoopState
) -> None:
    """Write ``root/step-N`` (N = ``state.step``) and prune to the newest ``keep``; a collective."""
    # Write to a temporary name and rename: a kill mid-write never leaves a loadable half-checkpoint.
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
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
