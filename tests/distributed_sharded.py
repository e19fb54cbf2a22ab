"""Worker for tests/test_distributed.py: tests/distributed_train.py under FSDP or DeepSpeed on CPU.

Launch with ``accelerate launch --config_file training/accelerate/fsdp.yaml`` (or the DeepSpeed one)
and ACCELERATE_USE_CPU=true. Accelerate enables FSDP and DeepSpeed only on GPU-like devices: on a
CPU-only launch it quietly falls back to DDP (FSDP) or to one process per rank (DeepSpeed). So
before the trainer creates its Accelerator, this worker sets up the process state the way a GPU
launch would, but with gloo on the CPU: FSDP sees a MULTI_GPU-type state, DeepSpeed a gloo backend.
Everything after that (sharding, collectives, checkpoints, the saved model) is the real code path.
"""

from __future__ import annotations

import importlib
import os

from accelerate import PartialState
from accelerate.utils import DistributedType


def main() -> None:
    """Set up the CPU process group for FSDP or DeepSpeed, then run the DDP test's worker."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # DeepSpeed must not see ACCELERATE_USE_CPU (Accelerate would then skip it); gloo it is.
        os.environ.pop("ACCELERATE_USE_CPU", None)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # DeepSpeed's CPU backend would first compile its shared-memory all-reduce (C++, about two
        # minutes on 2 cores); it is only a speed-up, gloo carries the collectives without it. (By
        # module name: the attribute deepspeed.comm.torch is the torch package, re-exported.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        PartialState(backend="gloo")
    else:
        state = PartialState(cpu=True)
        # Accelerate turns ACCELERATE_USE_FSDP into FSDP only for these distributed types.
        state.distributed_type = DistributedType.MULTI_GPU
    import distributed_train

    distributed_train.main()


if __name__ == "__main__":
    main()
