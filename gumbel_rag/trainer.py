"""The end-to-end fine-tuning loop, on Hugging Face Accelerate.

``train(reranker, loss, examples, config)`` reads top to bottom: keep the rows the loss can learn from,
set up (accelerator, optimizer, schedule, resume), step through the accumulation windows of each epoch,
finish (final evaluation, the saved model, curves, a summary). What the method is lives in the loss
(:mod:`gumbel_rag.losses`, which owns its reader and hyperparameters); checkpoints in
:mod:`gumbel_rag.checkpoints`; the multi-process special cases in :mod:`gumbel_rag.distributed`.

Why Accelerate rather than the transformers ``Trainer``: a step here feeds *text* to two models
(the trainable reranker and a frozen reader that must not be wrapped, sharded or saved), and the
loss needs the reader's cached document states; the ``Trainer`` assumes one model that maps tensor
batches to a loss. Accelerate gives the same launch story (DDP, FSDP, DeepSpeed via
``accelerate launch``), mixed precision, gradient accumulation and checkpointing, with a loop that
stays readable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from gumbel_rag.adapters import add_lora, merge_lora
from gumbel_rag.checkpoints import (
    LoopState,
    NoiseState,
    clear_run_artifacts,
    data_fingerprint,
    has_saved_model,
    identity_differences,
    load_checkpoint,
    newest_complete,
    run_artifacts,
    save_checkpoint,
    saved_identity,
    weights_fingerprint,
)
from gumbel_rag.data import LoadSummary, QAExample
from gumbel_rag.data.files import atomic_write_text
from gumbel_rag.defaults import (
    DEFAULT_INTERPOLATION,
    DEFAULT_PATIENCE,
    DEFAULT_START_DECAY,
    DEFAULT_VALIDATION_FRACTION,
)
from gumbel_rag.distributed import (
    configure_deepspeed,
    full_parameters,
    grads_finite,
    mixed_precision,
    on_every_rank,
    save_model,
    shards_weights,
    unsharded_template,
    weights_finite,
)
from gumbel_rag.errors import ConfigError, TrainingError
from gumbel_rag.evaluation import evaluate_reranker, reader_answer_loss
from gumbel_rag.losses.base import RerankLoss, candidate_texts
from gumbel_rag.plotting import plot_curves
from gumbel_rag.reranker import GumbelReranker

__all__ = ["TrainConfig", "TrainResult", "train", "trainable_examples"]

logger = logging.getLogger(__name__)


# Candidates per training question beyond which the later ones (in retrieval order) are cut: the reader's
# document pass grows with them (1,000 candidates took 9.2 GB for one step at 32 document tokens).
DEFAULT_MAX_CANDIDATES = 100

# Validation held out of the training rows when no dev set is given (DEFAULT_VALIDATION_FRACTION of
# them): at least 1 and at most 200 rows, and only from logs of at least 10 rows (a smaller log trains on
# everything, without selection).
MAX_VALIDATION_ROWS = 200
MIN_ROWS_TO_SPLIT = 10
# Evaluations per run when eval_every is not given.
EVALUATIONS_PER_RUN = 10

# The TrainConfig fields that decide a run's trajectory (part of its identity: resuming with another value
# is refused); the others (intervals, logging, resume itself) may change between sittings.
TRAJECTORY_FIELDS = (
    "learning_rate",
    "epochs",
    "batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "max_steps",
    "max_candidates",
    "validation_fraction",
    "start_decay",
    "interpolation",
    "lora_rank",
    "select_best",
    "early_stopping_patience",
    "eval_every",
)


@dataclass
class TrainConfig:
    """Settings of the loop (optimisation, schedule, logging, checkpoints); the method is the loss's.

    Without ``dev_examples``, ``validation_fraction`` of the training rows (seeded; at most
    ``MAX_VALIDATION_ROWS``) are held out as a validation split; with them, the dev set is the validation
    set. The model is evaluated on it at step 0 and every ``eval_every`` steps (default: about ten times
    per run); ``select_best`` keeps the weights of the best evaluation (step 0, the starting model,
    included) and ``early_stopping_patience`` stops after that many evaluations without improvement.
    The score is the mean nDCG@k over ``eval_ks`` on the validation rows that have gold labels when at
    least half of them do, else the reader's answer loss reading the reranker's top k (lower is better).

    Guards that keep what the starting reranker knows (docs/training.md, "Do no harm"): ``start_decay``
    pulls the weights towards the starting ones after every optimizer step (decoupled L2-SP:
    ``theta -= lr * start_decay * (theta - theta_0)``); ``interpolation`` saves
    ``theta_0 + interpolation * (theta - theta_0)`` (WiSE-FT weight-space ensembling; 1 keeps the trained
    weights); ``lora_rank`` trains low-rank adapters only (:mod:`gumbel_rag.adapters`) and merges them
    into the saved model. The KL anchor is a loss: :class:`gumbel_rag.losses.anchor.AnchoredLoss`.

    ``output_dir`` must not hold an earlier run's model, checkpoints or logs unless ``resume`` (continue
    that run, which must have been started with the same trajectory settings, loss, reader, starting
    weights and data) or ``overwrite`` (replace it). ``allow_changed_settings`` resumes a run whose
    settings differ, with a warning listing them.
    """

    output_dir: str
    learning_rate: float = 2e-5
    epochs: int = 1
    batch_size: int = 1
    gradient_accumulation_steps: int = 4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int | None = None
    save_every: int = 50
    save_total_limit: int = 2
    eval_ks: tuple[int, ...] = (2, 5)
    seed: int = 0
    mixed_precision: str = "auto"
    resume: bool = False
    overwrite: bool = False
    allow_changed_settings: bool = False
    max_steps: int | None = None
    max_candidates: int | None = DEFAULT_MAX_CANDIDATES
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    start_decay: float = DEFAULT_START_DECAY
    interpolation: float = DEFAULT_INTERPOLATION
    lora_rank: int | None = None
    select_best: bool = True
    early_stopping_patience: int | None = DEFAULT_PATIENCE
    nonfinite: str = "skip"
    progress: bool = True

    def __post_init__(self) -> None:
        """Reject settings that cannot train, naming the field (every number must be finite)."""
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "save_every"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("save_total_limit", self.save_total_limit, minimum=1)
        _check_float("validation_fraction", self.validation_fraction, low=0.0, high=0.5)
        _check_float("start_decay", self.start_decay, low=0.0)
        _check_float("interpolation", self.interpolation, low=0.0, high=1.0)
        if self.lora_rank is not None:
            _check_int("lora_rank", self.lora_rank, minimum=1)
        for name in ("max_steps", "max_candidates", "eval_every", "early_stopping_patience"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        # Above 1 AdamW's first step overflows float32 inside torch; fine-tuning rates are around 1e-5.
        _check_float("learning_rate", self.learning_rate, low=0.0, high=1.0, low_open=True)
        _check_float("max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        _check_float("weight_decay", self.weight_decay, low=0.0)
        _check_float("warmup_ratio", self.warmup_ratio, low=0.0, high=1.0)
        if self.nonfinite not in ("skip", "raise"):
            raise ConfigError(f"nonfinite must be 'skip' or 'raise', got {self.nonfinite!r}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite contradict each other: continue the run, or replace it")
        self.eval_ks = tuple(self.eval_ks)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(
    name: str, value: Any, *, low: float, high: float | None = None, low_open: bool = False
) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ConfigError(f"{name} must be a finite number {bounds}, got {value!r}")


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
    dropped: LoadSummary = field(default_factory=LoadSummary)
    cut_rows: int = 0
    validation_rows: int = 0
    best_step: int | None = None
    best_score: float | None = None
    stopped_early: bool = False


def cap_candidates(examples: Sequence[QAExample], cap: int | None) -> tuple[list[QAExample], int]:
    """Each example with at most ``cap`` candidates (the first ones, in retrieval order); how many were cut.

    Gold labels on cut candidates go with them.
    """
    if cap is None:
        return list(examples), 0
    out, cut = [], 0
    for ex in examples:
        if len(ex.candidates) <= cap:
            out.append(ex)
            continue
        cut += 1
        gold = None if ex.gold is None else [g for g in ex.gold if g < cap]
        out.append(replace(ex, candidates=ex.candidates[:cap], gold=gold))
    return out, cut


def split_validation(
    examples: Sequence[QAExample], fraction: float, *, seed: int
) -> tuple[list[QAExample], list[QAExample]]:
    """(training rows, validation rows): a seeded ``fraction`` of the rows held out, order kept in each."""
    n = len(examples)
    if fraction <= 0 or n < MIN_ROWS_TO_SPLIT:
        return list(examples), []
    n_val = min(max(1, round(fraction * n)), MAX_VALIDATION_ROWS)
    # A generator of its own, so that the split does not depend on (or move) any other random state.
    held = set(torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()[:n_val])
    return [ex for i, ex in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def mean_ndcg(metrics: dict[str, float], ks: Sequence[int]) -> float:
    """The guard's score of labelled validation rows: mean nDCG@k over ``ks`` (higher is better)."""
    return sum(metrics[f"ndcg@{k}"] for k in ks) / len(ks)


def trainable_examples(
    loss: RerankLoss | Callable[[QAExample], str | None], examples: Sequence[QAExample]
) -> tuple[list[QAExample], LoadSummary]:
    """The rows ``loss`` can learn from, and a summary of the others (each with the loss's reason).

    ``loss`` is a loss, or a rule ``example -> reason or None`` such as
    ``functools.partial(GumbelRerankLoss.row_problem, k=5)`` to check rows before any model is loaded.
    """
    rule = loss.skip_reason if isinstance(loss, RerankLoss) else loss
    kept: list[QAExample] = []
    summary = LoadSummary()
    for position, example in enumerate(examples):
        reason = rule(example)
        if reason is None:
            kept.append(example)
            continue
        path, _, line = (example.source or "").rpartition(":")
        if not (path and line.isdigit()):
            path, line = example.id or "<examples>", str(position + 1)
        summary.skip(path, int(line), reason, f"{path}:{line}: {reason}")
    summary.loaded = len(kept)
    return kept, summary


def train(
    reranker: GumbelReranker,
    loss: RerankLoss,
    train_examples: Sequence[QAExample],
    config: TrainConfig,
    dev_examples: Sequence[QAExample] | None = None,
) -> TrainResult:
    """Fine-tune ``reranker`` by minimising ``loss`` (e.g. the frozen reader's answer loss under its mask).

    Writes the final model to ``config.output_dir`` (a sentence-transformers directory), logs
    (TensorBoard events, ``metrics.jsonl``, ``curves.png``) to ``output_dir/logs`` and checkpoints
    to ``output_dir/checkpoints``. ``config.resume`` continues from the newest complete checkpoint.
    Rows the loss cannot learn from are dropped first (counted in ``TrainResult.dropped``).
    """
    examples, cut = cap_candidates(train_examples, config.max_candidates)
    if cut:
        logger.warning(
            "%d training rows have more than max_candidates=%d candidates; their later candidates (in "
            "retrieval order) are not trained on",
            cut,
            config.max_candidates,
        )
    examples, dropped = trainable_examples(loss, examples)
    if dropped.n_skipped:
        logger.warning("training rows the %s loss cannot learn from: %s", loss.method, dropped)
    if not examples:
        reasons = ", ".join(f"{n} {reason}" for reason, n in dropped.skipped.items())
        raise TrainingError(
            f"nothing to train: none of the {len(train_examples)} rows can teach the {loss.method} loss"
            + (f" ({reasons})" if reasons else "")
        )
    validation: list[QAExample] | None = None  # None: the dev set is the validation set
    if dev_examples is None:
        examples, validation = split_validation(examples, config.validation_fraction, seed=config.seed)
        if validation:
            logger.info("held out %d of %d training rows for validation", len(validation), len(examples))
        elif config.validation_fraction > 0:
            logger.warning(
                "%d training rows are too few to hold out a validation split: training on all of them, "
                "without checkpoint selection or early stopping",
                len(examples),
            )
    run = _Run(reranker, loss, examples, config, dev_examples, validation)
    while not run.done:
        run.step(run.next_window())
    result = run.finish(dropped)
    result.cut_rows = cut
    return result


class _Run:
    """One training run's state, set up by ``__init__``, advanced by ``step``, closed by ``finish``."""

    def __init__(
        self,
        reranker: GumbelReranker,
        loss: RerankLoss,
        examples: list[QAExample],
        config: TrainConfig,
        dev_examples: Sequence[QAExample] | None,
        validation: Sequence[QAExample] | None,
    ) -> None:
        self.loss, self.examples, self.config, self.dev = loss, examples, config, dev_examples
        self.validation_is_dev = validation is None
        self.validation = list(dev_examples or []) if validation is None else list(validation)
        output = Path(config.output_dir)
        self.output, self.log_dir, self.ckpt_dir = output, output / "logs", output / "checkpoints"
        self.metrics_file = self.log_dir / "metrics.jsonl"
        acc = self.accelerator = Accelerator(
            mixed_precision=mixed_precision(config.mixed_precision),
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(self.log_dir)),
            # Sentence-transformers backbones keep heads the score never uses (e.g. BERT's pooler); DDP
            # must not wait for their gradients.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        set_seed(config.seed)
        if not config.resume:
            self._claim_output()
        # Every process looks at the directory before the main one writes into it: a slower rank would
        # otherwise find this run's own logs/ and refuse it as an earlier run's.
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

        # Guards: the starting weights (for start_decay / interpolation), taken before any adapter.
        self._lora = None
        self._start: dict[str, torch.Tensor] = {}
        if (config.start_decay or config.lora_rank) and shards_weights(acc):
            raise ConfigError("start_decay and lora_rank need unsharded weights (no FSDP / DeepSpeed ZeRO-3)")
        guarded = config.start_decay or config.interpolation < 1 or config.lora_rank
        # Under FSDP / ZeRO-3 only the main process needs them: it interpolates the gathered weights.
        if guarded and (not shards_weights(acc) or acc.is_main_process):
            self._start = {name: p.detach().clone() for name, p in reranker.named_parameters()}
        if config.lora_rank:
            self._lora = add_lora(reranker, config.lora_rank)
        reranker.train()
        optimizer = torch.optim.AdamW(
            [p for p in reranker.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        micro_per_epoch = math.ceil(len(examples) / (config.batch_size * acc.num_processes))
        self.steps_per_epoch = math.ceil(micro_per_epoch / config.gradient_accumulation_steps)
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.eval_every = config.eval_every or max(1, math.ceil(self.total_steps / EVALUATIONS_PER_RUN))
        # The scheduler stays unprepared: total_steps already counts global steps, and a prepared
        # scheduler would step once per process.
        self.scheduler = get_linear_schedule_with_warmup(
            optimizer, int(config.warmup_ratio * self.total_steps), max(self.total_steps, 1)
        )
        self.identity = self._identity(reranker, acc)
        self.template = unsharded_template(acc, reranker)
        configure_deepspeed(acc, config.batch_size, config.gradient_accumulation_steps)
        self.model, self.optimizer = acc.prepare(reranker, optimizer)
        self.noise = NoiseState(config.seed + acc.process_index)
        self.state = LoopState()
        self._saved_at: int | None = None
        self._evaluated_at: int | None = None

        latest = self._checkpoint_to_resume() if config.resume else None
        if latest is not None:
            load_checkpoint(latest, acc, self.scheduler, self.noise, self.state)
            if acc.is_main_process:
                self._drop_metrics_after(self.state.step)
            logger.info("resumed from %s (step %d)", latest, self.state.step)
        elif acc.is_main_process:
            self.metrics_file.unlink(missing_ok=True)
            settings = {**asdict(config), "loss": loss.options(), "identity": self.identity}
            (self.log_dir / "train_config.json").write_text(json.dumps(settings, indent=2) + "\n")
        acc.init_trackers("gumbel-rag")

        self.stopped_early = False
        self.initial = self.evaluate() if self.state.step == 0 else {}
        self.last_metrics = self.initial
        self.bar = tqdm(
            total=self.total_steps, initial=self.state.step, desc="training", disable=not config.progress
        )
        self.step_times: list[float] = []
        self.window_losses: list[float] = []
        self.t_step = time.perf_counter()
        self.done = self.state.step >= self.total_steps
        self._epoch = -1
        self._windows: list[list[list[int]]] = []

    # ------------------------------------------------------------------ which run this is

    def _identity(self, reranker: GumbelReranker, acc: Accelerator) -> dict[str, Any]:
        """What decides this run's trajectory (see gumbel_rag.checkpoints): resuming must match it."""
        config = asdict(self.config)
        reader = self.loss.reader
        return {
            "settings": {name: config[name] for name in TRAJECTORY_FIELDS},
            "mixed_precision": mixed_precision(self.config.mixed_precision),
            "processes": acc.num_processes,
            "loss": self.loss.options(),
            "reader": None
            if reader is None
            else {
                "model": str(getattr(reader.model.config, "_name_or_path", "")),
                "class": type(reader).__name__,
                "max_document_tokens": getattr(reader, "max_document_tokens", None),
            },
            "start": weights_fingerprint(reranker.state_dict().items()),
            "data": data_fingerprint(self.examples),
        }

    def _claim_output(self) -> None:
        """A fresh run needs an output directory free of earlier runs, or ``overwrite`` to replace them."""
        found = run_artifacts(self.output)
        if not found:
            return
        if not self.config.overwrite:
            raise TrainingError(
                f"{self.output} already holds {', '.join(found)} from an earlier run; resume that run "
                "(--resume / resume=True) or replace it (--overwrite / overwrite=True)"
            )
        logger.warning("overwrite: replacing the earlier run in %s (%s)", self.output, ", ".join(found))
        if self.accelerator.is_main_process:
            clear_run_artifacts(self.output)

    def _checkpoint_to_resume(self) -> Path | None:
        """The newest complete checkpoint of this run; refuses another run's, falls back past broken ones."""
        latest, skipped = newest_complete(self.ckpt_dir)
        for line in skipped:
            logger.warning("not resuming from %s", line)
        if latest is None:
            if has_saved_model(self.output):
                why = f" ({'; '.join(skipped)})" if skipped else ""
                raise TrainingError(
                    f"--resume: {self.output} holds a saved model but no complete checkpoint to continue "
                    f"from{why}; use --overwrite to train again"
                )
            logger.warning(
                "--resume: no complete checkpoint in %s; starting from the first step", self.ckpt_dir
            )
            if self.accelerator.is_main_process:
                clear_run_artifacts(self.output)
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            self.accelerator.wait_for_everyone()
            return None
        saved = saved_identity(latest)
        if saved is None:
            differences = ["the checkpoint has no run identity (written by an older gumbel-rag)"]
        else:
            differences = identity_differences(saved, self.identity)
        if differences and not self.config.allow_changed_settings:
            raise TrainingError(
                f"--resume: {latest} belongs to another run ({'; '.join(differences)}); resume with the "
                "settings it was started with, pass --allow-changed-settings to continue anyway, or "
                "--overwrite to start afresh"
            )
        if differences:
            logger.warning("resuming %s with changed settings: %s", latest, "; ".join(differences))
        return latest

    def _drop_metrics_after(self, step: int) -> None:
        """Forget the metrics rows a killed run logged after its last checkpoint (they are redone)."""
        if not self.metrics_file.is_file():
            return
        lines = self.metrics_file.read_text(encoding="utf8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.metrics_file, "".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ data order

    def next_window(self) -> list[list[int]]:
        """The micro-batches (example indices) of the next optimizer step, in the seeded epoch order.

        The order is a function of (seed, epoch, rank) only, so a resumed run continues exactly where the
        checkpointed one stopped.
        """
        epoch = self.state.step // self.steps_per_epoch
        if epoch != self._epoch:
            self._epoch = epoch
            acc, config = self.accelerator, self.config
            batches = _micro_batches(
                len(self.examples),
                config.batch_size,
                seed=config.seed + epoch,
                rank=acc.process_index,
                world=acc.num_processes,
            )
            accumulation = config.gradient_accumulation_steps
            self._windows = [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]
        return self._windows[self.state.step - epoch * self.steps_per_epoch]

    # ------------------------------------------------------------------ one optimizer step

    def step(self, window: list[list[int]]) -> None:
        """Forward and backward every micro-batch of ``window``, then one optimizer step (or a skip)."""
        acc, config = self.accelerator, self.config
        ok = True
        for position, indices in enumerate(window):
            batch = [self.examples[i] for i in indices]
            # Only the micro-batch that ends an accumulation window all-reduces gradients.
            last = position == len(window) - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                ok &= self._micro_step(batch, scale=1.0 / len(window))
        ok = ok and grads_finite(self.model)
        # One decision for all processes: under FSDP each sees only its shard of the gradients, and a
        # non-finite loss on one rank alone must not leave the replicas apart.
        ok = on_every_rank(acc, ok)
        if ok:
            acc.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            if config.start_decay:
                self._decay_to_start(self.scheduler.get_last_lr()[0] * config.start_decay)
            if not on_every_rank(acc, weights_finite(self.model)):
                lr = self.scheduler.get_last_lr()[0]
                raise TrainingError(
                    f"the reranker's weights became non-finite at optimizer step {self.state.step + 1} "
                    f"(learning rate {lr:g}; is it too high?); the model was not saved"
                )
        elif config.nonfinite == "raise":
            questions = [self.examples[i].question for i in window[-1]]
            raise FloatingPointError(
                f"non-finite loss or gradient at step {self.state.step + 1}; "
                f"last batch questions: {questions!r}"
            )
        else:
            self.state.skipped += 1
            logger.warning("skipped step %d: non-finite loss or gradient", self.state.step + 1)
        with warnings.catch_warnings():
            # A skipped step still advances the schedule, which torch flags as out of order.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        self.optimizer.zero_grad()
        self.state.step += 1
        self._log_step()
        if self.state.step % self.eval_every == 0:
            self.last_metrics = self.evaluate() or self.last_metrics
        if self.state.step % config.save_every == 0 and self.state.step != self._saved_at:
            self._save()
        self.done = self.state.step >= self.total_steps or self.stopped_early

    @torch.no_grad()
    def _decay_to_start(self, rate: float) -> None:
        """theta -= rate * (theta - theta_0) for every trained weight (decoupled L2-SP)."""
        for name, param in self.accelerator.unwrap_model(self.model).named_parameters():
            start = self._start.get(name)
            if param.requires_grad and start is not None:
                param.sub_(param - start, alpha=rate)

    @torch.no_grad()
    def _finish_guards(self) -> None:
        """Merge LoRA adapters into the weights, then interpolate towards the starting weights."""
        model = self.accelerator.unwrap_model(self.model)
        if self._lora is not None:
            merge_lora(model, self._lora)
            self._lora = None
        if not shards_weights(self.accelerator):
            self._interpolate(model)

    @torch.no_grad()
    def _interpolate(self, model: torch.nn.Module) -> None:
        """theta = theta_0 + interpolation * (theta - theta_0) (a no-op at interpolation 1)."""
        alpha = self.config.interpolation
        if alpha < 1:
            for name, param in model.named_parameters():
                if name in self._start:
                    param.copy_(self._start[name] + alpha * (param - self._start[name]))

    def _save(self) -> None:
        """A checkpoint at the current step, keeping the best one (the model to select) from pruning."""
        acc, config = self.accelerator, self.config
        save_checkpoint(
            acc,
            self.ckpt_dir,
            config.save_total_limit,
            self.scheduler,
            self.noise,
            self.state,
            self.identity,
            protect=self.state.best_step if config.select_best else None,
        )
        self._saved_at = self.state.step

    def _micro_step(self, batch: list[QAExample], *, scale: float) -> bool:
        """Forward and backward one micro-batch; returns False when its loss is not finite."""
        scores, valid = self.model([ex.question for ex in batch], candidate_texts(batch))
        prepared = self.loss.prepare(batch)
        value = self.loss(scores, valid, prepared, generator=self.noise.generator)
        if torch.isfinite(value):
            self.accelerator.backward(value * scale)
            self.window_losses.append(value.item())
            return True
        # A zero backward keeps DDP's gradient all-reduce in step with the other processes.
        self.accelerator.backward(scores.sum() * 0.0)
        return False

    def _log_step(self) -> None:
        now = time.perf_counter()
        self.step_times.append(now - self.t_step)
        self.t_step = now
        losses = self.window_losses
        mean_loss = sum(losses) / len(losses) if losses else float("nan")
        losses.clear()
        lr = self.scheduler.get_last_lr()[0]
        self.accelerator.log({"train/loss": mean_loss, "train/lr": lr}, step=self.state.step)
        if self.accelerator.is_main_process:
            _append_jsonl(
                self.metrics_file, {"step": self.state.step, "split": "train", "loss": mean_loss, "lr": lr}
            )
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{mean_loss:.3f}")

    # ------------------------------------------------------------------ evaluation and the end

    def evaluate(self) -> dict[str, float]:
        """Evaluate on the dev examples and the validation split (logged); track the best; {} without dev."""
        acc = self.accelerator
        unwrapped = acc.unwrap_model(self.model)
        metrics: dict[str, float] = {}
        with full_parameters(acc, self.model):
            if self.dev:
                metrics = evaluate_reranker(unwrapped, self.dev, ks=self.config.eval_ks, accelerator=acc)
                self._log_eval("dev", metrics)
            if self.validation and not self.validation_is_dev:
                score, val_metrics = self._validation_score(unwrapped, self.validation)
                self._log_eval("validation", {**val_metrics, "score": score})
            elif self.validation:
                score, _ = self._validation_score(unwrapped, self.validation, metrics)
            else:
                score = None
        unwrapped.train()
        self._evaluated_at = self.state.step
        self._track_best(score)
        return metrics

    def _validation_score(
        self, model: GumbelReranker, rows: Sequence[QAExample], ranked: dict[str, float] | None = None
    ) -> tuple[float | None, dict[str, float]]:
        """Higher is better: mean nDCG@k on the labelled rows if at least half have gold, else minus the
        top-k answer loss.

        Gold, where a log has it, is the sharper signal (the answer loss of a small reader barely moves
        when the ranking improves). nDCG rather than Recall: on a few dozen held-out questions Recall@k
        moves in steps of one gold document and stops moving once the gold is inside the top k, while
        nDCG@k also sees the order inside it, the order the do-no-harm guard exists to protect
        (docs/results.md, "Choosing the validation score").
        """
        acc, ks = self.accelerator, self.config.eval_ks
        labelled = [ex for ex in rows if ex.gold]
        if labelled and 2 * len(labelled) >= len(rows):
            # evaluate_reranker scores labelled rows only, so ``ranked`` (of all rows) is the same.
            metrics = ranked or evaluate_reranker(model, labelled, ks=ks, accelerator=acc)
            return mean_ndcg(metrics, ks), metrics
        reader = self.loss.reader
        if reader is None:
            return None, {}
        k = int(self.loss.options().get("k", max(ks)))
        metrics = reader_answer_loss(model, reader, rows, k, accelerator=acc)
        return (-metrics["answer_nll"] if metrics.get("n") else None), metrics

    def _log_eval(self, split: str, metrics: dict[str, float]) -> None:
        prefix = "eval" if split == "dev" else split
        self.accelerator.log({f"{prefix}/{k}": v for k, v in metrics.items()}, step=self.state.step)
        if self.accelerator.is_main_process:
            _append_jsonl(self.metrics_file, {"step": self.state.step, "split": split, **metrics})

    def _track_best(self, score: float | None) -> None:
        """Remember the best validation score (checkpointing its model); stop after ``patience`` worse."""
        if score is None or (not self.config.select_best and self.config.early_stopping_patience is None):
            return
        state = self.state
        if state.best_score is None or score > state.best_score:
            state.best_score, state.best_step, state.evals_since_best = score, state.step, 0
            if self.config.select_best and self._saved_at != state.step:
                self._save()
            return
        state.evals_since_best += 1
        patience = self.config.early_stopping_patience
        if patience is not None and state.evals_since_best >= patience:
            logger.warning(
                "stopping early at step %d: no validation score above step %d's (%.4f) in %d evaluations",
                state.step,
                state.best_step,
                state.best_score,
                patience,
            )
            self.stopped_early = True

    def finish(self, dropped: LoadSummary) -> TrainResult:
        """Evaluate once more if the last step was not evaluated, save the model, curves and a summary."""
        acc, config = self.accelerator, self.config
        self.bar.close()
        if self.state.step and self.state.skipped == self.state.step:
            raise TrainingError(
                f"every one of the {self.state.step} optimizer steps was skipped (non-finite loss or "
                "gradient): nothing was learned and the model was not saved"
            )
        if (self.dev or self.validation) and self._evaluated_at != self.state.step:
            self.last_metrics = self.evaluate() or self.last_metrics
        best = self.state.best_step
        if config.select_best and best is not None and best != self.state.step:
            logger.info("keeping the weights of step %d, the best on the validation rows", best)
            acc.load_state(str(self.ckpt_dir / f"step-{best}"))
            if self.dev:
                unwrapped = acc.unwrap_model(self.model)
                with full_parameters(acc, self.model):
                    self.last_metrics = evaluate_reranker(
                        unwrapped, self.dev, ks=config.eval_ks, accelerator=acc
                    )
                unwrapped.train()
        self._finish_guards()
        interpolated = config.interpolation < 1 and not shards_weights(acc)
        if self.dev and (interpolated or config.lora_rank):
            unwrapped = acc.unwrap_model(self.model)
            self.last_metrics = evaluate_reranker(unwrapped, self.dev, ks=config.eval_ks, accelerator=acc)
            unwrapped.train()
        acc.wait_for_everyone()
        if not on_every_rank(acc, weights_finite(self.model)):
            raise TrainingError(
                "the reranker's weights are not all finite after training; the model was not saved"
            )
        curves = self.log_dir / "curves.png"
        save_model(acc, self.model, self.template, self.output, before_saving=self._interpolate)
        seconds_per_step = _median(self.step_times)
        if acc.is_main_process:
            plot_curves(self.metrics_file, curves)
            summary = {
                "steps": self.state.step,
                "skipped_steps": self.state.skipped,
                "seconds_per_step": seconds_per_step,
                "initial": self.initial,
                "final": self.last_metrics,
                "validation_rows": len(self.validation),
                "best_step": self.state.best_step,
                "best_score": self.state.best_score,
                "stopped_early": self.stopped_early,
            }
            (self.log_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        acc.end_training()
        return TrainResult(
            model_dir=self.output,
            log_dir=self.log_dir,
            curves_png=curves,
            steps=self.state.step,
            skipped_steps=self.state.skipped,
            seconds_per_step=seconds_per_step,
            initial_metrics=self.initial,
            final_metrics=self.last_metrics,
            dropped=dropped,
            validation_rows=len(self.validation),
            best_step=self.state.best_step,
            best_score=self.state.best_score,
            stopped_early=self.stopped_early,
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


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf8") as f:
        f.write(json.dumps(row) + "\n")


def _median(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
