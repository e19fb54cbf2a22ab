"""The end-to-end fine-tuning loop, on Hugging Face Accelerate.

Why Accelerate rather than the transformers ``Trainer``: a step here feeds *text* to two models
(the trainable reranker and a frozen reader that must not be wrapped, sharded or saved), and the
loss needs the reader's cached document states; the ``Trainer`` assumes one model that maps tensor
batches to a loss. Accelerate gives the same launch story (DDP, FSDP, DeepSpeed via
``accelerate launch``), mixed precision, gradient accumulation and checkpointing, with a loop that
stays readable.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from gumbel_rag.data import QAExample
from gumbel_rag.evaluation import evaluate_reranker
from gumbel_rag.losses import METHODS, build_loss
from gumbel_rag.plotting import plot_curves
from gumbel_rag.readers.base import Reader
from gumbel_rag.reranker import GumbelReranker

__all__ = ["TrainConfig", "TrainResult", "train"]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"


@dataclass
class TrainConfig:
    """Hyperparameters and bookkeeping for one fine-tuning run."""

    output_dir: str
    method: str = "gumbel"
    k: int = 5
    kappa: float = 0.25
    tau: float = 1.0
    noise: bool = True
    temperature: float = 1.0
    teacher_temperature: float = 1.0
    learning_rate: float = 2e-5
    epochs: int = 1
    batch_size: int = 1
    gradient_accumulation_steps: int = 4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int = 50
    save_every: int = 50
    save_total_limit: int = 2
    eval_ks: tuple[int, ...] = (2, 5)
    seed: int = 0
    mixed_precision: str = "auto"
    resume: bool = False
    max_steps: int | None = None
    nonfinite: str = "skip"
    progress: bool = True

    def __post_init__(self) -> None:
        """Reject settings that cannot train."""
        for name in ("k", "epochs", "batch_size", "gradient_accumulation_steps", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.tau <= 0:
            raise ValueError("learning_rate and tau must be > 0")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.temperature <= 0 or self.teacher_temperature <= 0:
            raise ValueError("temperature and teacher_temperature must be > 0")
        if self.nonfinite not in ("skip", "raise"):
            raise ValueError(f"nonfinite must be 'skip' or 'raise', got {self.nonfinite!r}")
        self.eval_ks = tuple(self.eval_ks)


@dataclass
class TrainResult:
    """What a run produced: where the model and logs went, and the metrics it measured."""

    model_dir: Path
    log_dir: Path
    curves_png: Path
    steps: int
    skipped_steps: int
    seconds_per_step: float
    initial_metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)


class _NoiseState:
    """The Gumbel noise generator, checkpointed so a resumed run draws the same noise."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["rng"])


class _Progress:
    """Counters that must survive a resume: optimizer steps taken and steps skipped as non-finite."""

    def __init__(self) -> None:
        self.step = 0
        self.skipped = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.skipped = int(state["step"]), int(state["skipped"])


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete ones never get the final name)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


TRAINER_STATE = "trainer_state.json"


def _save_trainer_state(
    directory: Path, accelerator: Accelerator, scheduler: Any, noise: _NoiseState, progress: _Progress
) -> None:
    """Write the loop's own state as JSON and safetensors, so resuming never unpickles anything."""
    save_file(
        {"rng": noise.generator.get_state()},
        str(directory / f"noise_rng_{accelerator.process_index}.safetensors"),
    )
    if accelerator.is_main_process:
        state = {"progress": progress.state_dict(), "scheduler": scheduler.state_dict()}
        (directory / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf8")


def _load_trainer_state(
    directory: Path, accelerator: Accelerator, scheduler: Any, noise: _NoiseState, progress: _Progress
) -> None:
    """Restore what :func:`_save_trainer_state` wrote."""
    state = json.loads((directory / TRAINER_STATE).read_text(encoding="utf8"))
    progress.load_state_dict(state["progress"])
    scheduler.load_state_dict(state["scheduler"])
    noise.load_state_dict(load_file(str(directory / f"noise_rng_{accelerator.process_index}.safetensors")))


def _save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    keep: int,
    scheduler: Any,
    noise: _NoiseState,
    progress: _Progress,
) -> None:
    # Write to a temporary name and rename: a kill mid-write never leaves a loadable half-checkpoint.
    final = root / f"{CHECKPOINT_PREFIX}{progress.step}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{progress.step}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    # Every process writes its own noise state; the directory exists on all of them by now.
    _save_trainer_state(tmp, accelerator, scheduler, noise, progress)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _texts(example: QAExample) -> list[str]:
    return [c.content for c in example.candidates]


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf8") as f:
        f.write(json.dumps(row) + "\n")


def train(
    reranker: GumbelReranker,
    reader: Reader | None,
    train_examples: Sequence[QAExample],
    config: TrainConfig,
    dev_examples: Sequence[QAExample] | None = None,
    *,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> TrainResult:
    """Fine-tune ``reranker`` so that the frozen ``reader`` answers best from its relaxed top-k.

    Writes the final model to ``config.output_dir`` (a sentence-transformers directory), logs
    (TensorBoard events, ``metrics.jsonl``, ``curves.png``) to ``output_dir/logs`` and checkpoints
    to ``output_dir/checkpoints``. ``config.resume`` continues from the newest complete checkpoint.
    ``config.method`` picks the loss (G-Rerank or a baseline); ``reader`` may be None only for
    ``supervised``, which also drops the rows without gold labels.
    """
    loss_fn = loss_fn or build_loss(
        config.method,
        reader,
        k=config.k,
        kappa=config.kappa,
        tau=config.tau,
        noise=config.noise,
        temperature=config.temperature,
        teacher_temperature=config.teacher_temperature,
    )
    if getattr(loss_fn, "needs_gold", False):
        labelled = [ex for ex in train_examples if ex.gold]
        if len(labelled) < len(train_examples):
            logger.warning(
                "%d of %d training rows have no gold candidate; the %s loss skips them",
                len(train_examples) - len(labelled),
                len(train_examples),
                config.method,
            )
        train_examples = labelled
    if not train_examples:
        raise ValueError("no training examples (all rows were skipped, or the data is empty)")
    output = Path(config.output_dir)
    log_dir, ckpt_dir = output / "logs", output / "checkpoints"
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config.mixed_precision),
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(log_dir)),
        # Sentence-transformers backbones keep heads the score never uses (e.g. BERT's pooler); DDP
        # must not wait for their gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(config.seed)
    if accelerator.is_main_process:
        log_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    reranker.train()
    optimizer = torch.optim.AdamW(
        [p for p in reranker.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    world = accelerator.num_processes
    micro_per_epoch = math.ceil(len(train_examples) / (config.batch_size * world))
    steps_per_epoch = math.ceil(micro_per_epoch / config.gradient_accumulation_steps)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), max(total_steps, 1)
    )
    # FSDP and DeepSpeed ZeRO-3 shard the weights, and sentence-transformers saves only a whole model:
    # the main process keeps an unsharded copy to load the gathered weights into at the end.
    template = (
        copy.deepcopy(reranker) if _shards_weights(accelerator) and accelerator.is_main_process else None
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _configure_deepspeed(accelerator, config)
    # The scheduler stays unprepared: total_steps already counts global steps, and a prepared
    # scheduler would step once per process.
    model, optimizer = accelerator.prepare(reranker, optimizer)
    noise = _NoiseState(config.seed + accelerator.process_index)
    progress = _Progress()

    metrics_file = log_dir / "metrics.jsonl"
    if config.resume and _checkpoints(ckpt_dir):
        latest = _checkpoints(ckpt_dir)[-1]
        accelerator.load_state(str(latest))
        _load_trainer_state(latest, accelerator, scheduler, noise, progress)
        logger.info("resumed from %s (step %d)", latest, progress.step)
    elif accelerator.is_main_process:
        metrics_file.unlink(missing_ok=True)
        (log_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    accelerator.init_trackers("gumbel-rag")

    def evaluate(step: int) -> dict[str, float]:
        if not dev_examples:
            return {}
        unwrapped = accelerator.unwrap_model(model)
        with _full_parameters(accelerator, model):
            metrics = evaluate_reranker(unwrapped, dev_examples, ks=config.eval_ks, accelerator=accelerator)
        unwrapped.train()
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        if accelerator.is_main_process:
            _append_jsonl(metrics_file, {"step": step, "split": "dev", **metrics})
        return metrics

    initial = evaluate(progress.step) if progress.step == 0 else {}
    start_step = progress.step
    bar = tqdm(total=total_steps, initial=start_step, desc="training", disable=not config.progress)
    step_times: list[float] = []
    window_loss: list[float] = []
    last_metrics = initial
    t_step = time.perf_counter()
    step_ok = True
    done = progress.step >= total_steps
    epoch = progress.step // steps_per_epoch if steps_per_epoch else 0
    while not done and epoch < config.epochs:
        batches = _micro_batches(
            len(train_examples),
            config.batch_size,
            seed=config.seed + epoch,
            rank=accelerator.process_index,
            world=world,
        )
        skip = (progress.step - epoch * steps_per_epoch) * config.gradient_accumulation_steps
        for n_micro, indices in enumerate(batches[skip:], start=skip + 1):
            batch = [train_examples[i] for i in indices]
            window_start, window_end = _window(n_micro, config.gradient_accumulation_steps, len(batches))
            window = window_end - window_start + 1
            sync = n_micro == window_end
            # Only the micro-batch that ends an accumulation window all-reduces gradients.
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                step_ok &= _micro_step(
                    model,
                    reader,
                    loss_fn,
                    batch,
                    noise.generator,
                    accelerator,
                    window_loss,
                    scale=1.0 / window,
                )
            if not sync:
                continue
            step_ok = step_ok and _grads_finite(model)
            if world > 1:
                # One decision for all processes: under FSDP each sees only its shard of the
                # gradients, and a non-finite loss on one rank alone must not leave the replicas apart.
                step_ok = _on_every_rank(accelerator, step_ok)
            if step_ok:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
            elif config.nonfinite == "raise":
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {progress.step + 1}; last batch questions: "
                    f"{[ex.question for ex in batch]!r}"
                )
            else:
                progress.skipped += 1
                logger.warning("skipped step %d: non-finite loss or gradient", progress.step + 1)
            with warnings.catch_warnings():
                # A skipped step still advances the schedule, which torch flags as out of order.
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                scheduler.step()
            optimizer.zero_grad()
            step_ok = True
            progress.step += 1
            now = time.perf_counter()
            step_times.append(now - t_step)
            t_step = now
            mean_loss = sum(window_loss) / len(window_loss) if window_loss else float("nan")
            window_loss.clear()
            row = {
                "step": progress.step,
                "split": "train",
                "loss": mean_loss,
                "lr": scheduler.get_last_lr()[0],
            }
            accelerator.log({"train/loss": mean_loss, "train/lr": row["lr"]}, step=progress.step)
            if accelerator.is_main_process:
                _append_jsonl(metrics_file, row)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}")
            if progress.step % config.eval_every == 0:
                last_metrics = evaluate(progress.step) or last_metrics
            if progress.step % config.save_every == 0:
                _save_checkpoint(accelerator, ckpt_dir, config.save_total_limit, scheduler, noise, progress)
            if progress.step >= total_steps:
                done = True
                break
        epoch += 1
    bar.close()
    if dev_examples and (progress.step % config.eval_every != 0 or not last_metrics):
        last_metrics = evaluate(progress.step)
    accelerator.wait_for_everyone()
    curves = log_dir / "curves.png"
    _save_model(accelerator, model, template, output)
    if accelerator.is_main_process:
        plot_curves(metrics_file, curves)
        summary = {
            "steps": progress.step,
            "skipped_steps": progress.skipped,
            "seconds_per_step": _median(step_times),
            "initial": initial,
            "final": last_metrics,
        }
        (log_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.end_training()
    return TrainResult(
        model_dir=output,
        log_dir=log_dir,
        curves_png=curves,
        steps=progress.step,
        skipped_steps=progress.skipped,
        seconds_per_step=_median(step_times),
        initial_metrics=initial,
        final_metrics=last_metrics,
    )


def _micro_batches(n: int, batch_size: int, *, seed: int, rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches of one epoch: a seeded permutation cut into global batches.

    Global micro-batch j is ``perm[j*B*W : (j+1)*B*W]`` and rank r takes its r-th slice of B, so W
    processes see exactly the examples one process would see with batch size B*W. With several
    processes the tail wraps around so every rank gets a full slice (DDP needs equal step counts).
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    global_size = batch_size * world
    n_micro = math.ceil(n / global_size)
    batches = []
    for j in range(n_micro):
        start = j * global_size + rank * batch_size
        positions = range(start, start + batch_size)
        if world == 1:
            positions = range(start, min(start + batch_size, n))
        batches.append([perm[p % n] for p in positions])
    return batches


def _window(n_micro: int, accumulation: int, n_batches: int) -> tuple[int, int]:
    """First and last micro-batch (1-based) of the accumulation window holding ``n_micro``."""
    start = (n_micro - 1) // accumulation * accumulation + 1
    return start, min(start + accumulation - 1, n_batches)


def _micro_step(
    model: torch.nn.Module,
    reader: Reader | None,
    loss_fn: Callable[..., torch.Tensor],
    batch: list[QAExample],
    generator: torch.Generator,
    accelerator: Accelerator,
    losses: list[float],
    *,
    scale: float,
) -> bool:
    """Forward and backward one micro-batch; returns False when its loss is not finite."""
    questions = [ex.question for ex in batch]
    documents = [_texts(ex) for ex in batch]
    scores, valid = model(questions, documents)
    reader_batch = None
    if getattr(loss_fn, "needs_reader", True):
        if reader is None:
            raise ValueError("this loss needs a reader, but train() got reader=None")
        reader_batch = reader.prepare(questions, documents, [ex.answers[0] for ex in batch])
    extra = {"gold": _gold_mask(batch, valid)} if getattr(loss_fn, "needs_gold", False) else {}
    loss = loss_fn(scores, valid, reader_batch, generator=generator, **extra)
    if torch.isfinite(loss):
        accelerator.backward(loss * scale)
        losses.append(loss.item())
        return True
    # A zero backward keeps DDP's gradient all-reduce in step with the other processes.
    accelerator.backward(scores.sum() * 0.0)
    return False


def _gold_mask(batch: Sequence[QAExample], like: torch.Tensor) -> torch.Tensor:
    """(B, N) bool tensor of each row's gold candidates, shaped and placed like ``like``."""
    gold = torch.zeros_like(like, dtype=torch.bool)
    for row, ex in enumerate(batch):
        gold[row, list(ex.gold or [])] = True
    return gold


def _grads_finite(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # FSDP2 gradients are DTensors: check this process's shard (_on_every_rank combines the ranks).
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    return all(bool(torch.isfinite(g).all()) for g in grads)


def _on_every_rank(accelerator: Accelerator, ok: bool) -> bool:
    """True only when ``ok`` holds on every process."""
    failed = accelerator.reduce(torch.tensor([0.0 if ok else 1.0], device=accelerator.device), "sum")
    return float(failed.item()) == 0.0


def _configure_deepspeed(accelerator: Accelerator, config: TrainConfig) -> None:
    """Tell DeepSpeed the loop's micro-batch, which it would otherwise read from a prepared dataloader."""
    if config.gradient_accumulation_steps != 1:
        # Under DeepSpeed, accelerator.backward also runs the engine's step, which accumulates on its own
        # schedule and rescales the loss; the loop's accumulation windows would be applied twice.
        raise ValueError(
            "under DeepSpeed use gradient_accumulation_steps=1 (--grad-accum 1) and scale --batch-size"
        )
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    ds_config["train_micro_batch_size_per_gpu"] = config.batch_size
    ds_config["gradient_accumulation_steps"] = 1


def _zero_stage(accelerator: Accelerator) -> int:
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def _shards_weights(accelerator: Accelerator) -> bool:
    """Whether each process holds only a shard of the reranker's weights (FSDP, DeepSpeed ZeRO-3)."""
    return accelerator.distributed_type == DistributedType.FSDP or _zero_stage(accelerator) == 3


@contextlib.contextmanager
def _full_parameters(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[None]:
    """Whole reranker weights on every process while evaluating (a no-op unless weights are sharded).

    Evaluation calls ``score_batch``, which runs the sentence-transformers model directly, so the
    forward hooks with which FSDP / ZeRO-3 gather the weights never fire; gather them here. Each
    process then ranks its own share of the dev set with no collective in between.
    """
    if not _shards_weights(accelerator):
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


def _save_model(
    accelerator: Accelerator, model: torch.nn.Module, template: GumbelReranker | None, output: Path
) -> None:
    """Write the trained reranker as a plain sentence-transformers directory (main process only)."""
    if not _shards_weights(accelerator):
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(output)
        return
    # A collective: every process sends its shard, the main process receives the whole state dict.
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process and template is not None:
        template.load_state_dict(state)
        template.save_pretrained(output)
    accelerator.wait_for_everyone()


def _median(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
