"""The distributed special cases of the training loop: sharded weights, DeepSpeed, one decision for all ranks.

With one process every function here is a no-op or the obvious thing; with DDP, FSDP or DeepSpeed (launched
by ``accelerate launch``) they keep the processes in step and the saved model whole.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

if TYPE_CHECKING:
    from gumbel_rag.reranker import GumbelReranker

__all__ = [
    "configure_deepspeed",
    "full_parameters",
    "grads_finite",
    "mixed_precision",
    "on_every_rank",
    "save_model",
    "shards_weights",
    "unsharded_template",
    "weights_finite",
]


def mixed_precision(setting: str) -> str:
    """``auto`` resolves to bf16 on a GPU that supports it, else no mixed precision."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def grads_finite(model: torch.nn.Module) -> bool:
    """Whether this process's gradients are all finite (combine the ranks with :func:`on_every_rank`)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # FSDP2 gradients are DTensors: check this process's shard.
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    return all(bool(torch.isfinite(g).all()) for g in grads)


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether this process's weights (its shards, under FSDP) are all finite."""
    # detach(): DeepSpeed's partitioned parameters refuse an out= op on a tensor that requires grad. Under
    # ZeRO-3 a rank's parameters are empty placeholders, so the check covers what the rank holds.
    params = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    return all(bool(torch.isfinite(p.detach()).all()) for p in params)


def on_every_rank(accelerator: Accelerator, ok: bool) -> bool:
    """True only when ``ok`` holds on every process."""
    if accelerator.num_processes == 1:
        return ok
    failed = accelerator.reduce(torch.tensor([0.0 if ok else 1.0], device=accelerator.device), "sum")
    return float(failed.item()) == 0.0


def configure_deepspeed(accelerator: Accelerator, batch_size: int, gradient_accumulation_steps: int) -> None:
    """Tell DeepSpeed the loop's micro-batch, which it would otherwise read from a prepared dataloader."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    if gradient_accumulation_steps != 1:
        # Under DeepSpeed, accelerator.backward also runs the engine's step, which accumulates on its own
        # schedule and rescales the loss; the loop's accumulation windows would be applied twice.
        raise ValueError(
            "under DeepSpeed use gradient_accumulation_steps=1 (--grad-accum 1) and scale --batch-size"
        )
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    ds_config["train_micro_batch_size_per_gpu"] = batch_size
    ds_config["gradient_accumulation_steps"] = 1


def _zero_stage(accelerator: Accelerator) -> int:
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def shards_weights(accelerator: Accelerator) -> bool:
    """Whether each process holds only a shard of the reranker's weights (FSDP, DeepSpeed ZeRO-3)."""
    return accelerator.distributed_type == DistributedType.FSDP or _zero_stage(accelerator) == 3


def unsharded_template(accelerator: Accelerator, reranker: GumbelReranker) -> GumbelReranker | None:
    """An unsharded copy of ``reranker`` on the main process when weights will be sharded, else None.

    FSDP and DeepSpeed ZeRO-3 shard the weights, and sentence-transformers saves only a whole model: the
    main process loads the gathered weights into this copy at the end.
    """
    if shards_weights(accelerator) and accelerator.is_main_process:
        return copy.deepcopy(reranker)
    return None


@contextlib.contextmanager
def full_parameters(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[None]:
    """Whole reranker weights on every process while evaluating (a no-op unless weights are sharded).

    Evaluation calls ``score_batch``, which runs the sentence-transformers model directly, so the
    forward hooks with which FSDP / ZeRO-3 gather the weights never fire; gather them here. Each
    process then ranks its own share of the dev set with no collective in between.
    """
    if not shards_weights(accelerator):
        yield
    elif accelerator.is_fsdp2:
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        # Evaluating before the first training forward would let an inner unit's hook make itself
        # the root; initialise the real root first (what its first forward would do).
        model._get_fsdp_state()._lazy_init()
        # Inner units (per-layer wrapping) would otherwise reshard after their forward and all-gather
        # again on the next chunk, a collective the other ranks (with other shares) never join.
        for unit in units[1:]:
            unit.set_reshard_after_forward(False, recurse=False)
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
            for unit in units[1:]:
                unit.set_reshard_after_forward(
                    accelerator.state.fsdp_plugin.reshard_after_forward, recurse=False
                )
    elif accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield
    else:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield


def save_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    template: GumbelReranker | None,
    output: Path,
    *,
    before_saving: Callable[[torch.nn.Module], None] | None = None,
) -> None:
    """Write the trained reranker as a plain sentence-transformers directory (main process only).

    With sharded weights, ``before_saving`` gets the gathered whole model on the main process (the
    unsharded run applies its guards before calling this).
    """
    if not shards_weights(accelerator):
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(output)
        return
    # A collective: every process sends its shard, the main process receives the whole state dict.
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process and template is not None:
        template.load_state_dict(state)
        if before_saving is not None:
            before_saving(template)
        template.save_pretrained(output)
    accelerator.wait_for_everyone()
