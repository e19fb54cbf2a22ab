"""The ``gumbel-rag`` command line: rerank, train, eval, mine and the demo (the README's main job)."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

FORMAT_CHOICES = ["auto", "qalog", "hotpotqa", "musique", "fid"]
DEBUG_ENV = "GUMBEL_RAG_DEBUG"
# How many skipped rows are printed; the full list goes to the --skipped-rows file.
SHOWN_SKIPS = 5
SKIPPED_ROWS_FILE = "skipped_rows.txt"


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,5, got {text!r}") from exc
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"every k must be >= 1, got {text!r}")
    return ks


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors read like every other error: one line, exit status 2."""

    def error(self, message: str) -> Any:
        """Print ``error: <message>`` (and where the options are listed) to stderr and exit 2."""
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each option's default, except where there is none to show or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        # None/False defaults ("not set", a flag that is off) say nothing; the help explains them.
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return help_text
        if "default" in help_text:
            return help_text
        return super()._get_help_string(action)

    def _expand_help(self, action: argparse.Action) -> str:
        # Tuples such as --eval-k's (2, 5) read back as they are typed: 2,5.
        if isinstance(action.default, tuple):
            action = copy.copy(action)
            action.default = ",".join(str(v) for v in action.default)
        return super()._expand_help(action)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model code from the model directory to run (off by default; only for models you trust)",
    )
    _add_hub_args(p)


def _add_hub_args(p: argparse.ArgumentParser) -> None:
    # A hub name is downloaded into the Hugging Face cache on first use, as transformers does.
    p.add_argument(
        "--local-files-only",
        action="store_true",
        help="never download models: use local directories and the Hugging Face cache only "
        "(like HF_HUB_OFFLINE=1)",
    )
    p.add_argument("--revision", default=None, help="hub models: branch, tag or commit to load")
    p.add_argument(
        "--token",
        default=None,
        help="hub models: access token for private or gated models (default: HF_TOKEN or `hf auth login`)",
    )
    p.add_argument(
        "--cache-folder",
        default=None,
        help="Hugging Face cache directory (default: ~/.cache/huggingface/hub)",
    )


def _hub_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The hub options of the command line, for every model loader."""
    return {
        "local_files_only": getattr(args, "local_files_only", False),
        "revision": getattr(args, "revision", None),
        "token": getattr(args, "token", None),
        "cache_folder": getattr(args, "cache_folder", None),
    }


# Loss hyperparameters: the loss option -> its CLI flag. Their defaults live in gumbel_rag.defaults (shown in
# --help); an option is passed to the loss only when given, so a flag that does not apply to the chosen
# --method is an error rather than silently ignored.
LOSS_FLAGS = {
    "k": "--k",
    "kappa": "--kappa",
    "tau": "--tau",
    "noise": "--no-noise",
    "temperature": "--temperature",
    "teacher_temperature": "--teacher-temperature",
}


def _add_train_args(p: argparse.ArgumentParser, eval_every: int | None = None) -> None:
    from gumbel_rag import defaults

    shown = {
        "k": defaults.DEFAULT_K,
        "kappa": defaults.DEFAULT_KAPPA,
        "tau": defaults.DEFAULT_TAU,
        "temperature": defaults.DEFAULT_TEMPERATURE,
        "teacher_temperature": defaults.DEFAULT_TEACHER_TEMPERATURE,
    }

    p.add_argument(
        "--method",
        choices=defaults.METHODS,
        default="gumbel",
        help="training loss: gumbel (G-Rerank), the distillation baselines emdr, pdist, loop, adist, or "
        "supervised (listwise loss on gold labels; needs labelled rows, no reader)",
    )
    p.add_argument("--reader", default=None, help="reader LLM name or path (default: SmolLM2-135M-Instruct)")
    loss = p.add_argument_group("loss options (each applies to the methods named)")
    loss.add_argument(
        "--k",
        type=_positive_int,
        default=None,
        help=f"gumbel: documents the reader sees (relaxed top-k) (default: {shown['k']})",
    )
    loss.add_argument(
        "--kappa",
        type=_finite_float,
        default=None,
        help=f"gumbel: scale of the reranker scores before the noise (default: {shown['kappa']})",
    )
    loss.add_argument(
        "--tau",
        type=_positive_float,
        default=None,
        help=f"gumbel: temperature of the relaxed top-k (default: {shown['tau']})",
    )
    loss.add_argument("--no-noise", action="store_true", help="gumbel ablation: no Gumbel noise")
    loss.add_argument(
        "--temperature",
        type=_positive_float,
        default=None,
        help="emdr, pdist, loop, adist, supervised: temperature T of the reranker's distribution "
        f"softmax(w / T) (default: {shown['temperature']})",
    )
    loss.add_argument(
        "--teacher-temperature",
        type=_positive_float,
        default=None,
        help=f"pdist, loop, adist: temperature T' of the teacher distribution "
        f"(default: {shown['teacher_temperature']})",
    )
    p.add_argument("--epochs", type=_positive_int, default=1, help="passes over the training data")
    p.add_argument(
        "--lr", type=_positive_float, default=2e-5, help="peak learning rate (linear warm-up and decay)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=1, help="questions per micro-batch")
    p.add_argument("--grad-accum", type=_positive_int, default=4, help="micro-batches per optimizer step")
    p.add_argument(
        "--max-steps",
        type=_positive_int,
        default=None,
        help="stop after this many optimizer steps (default: no limit)",
    )
    p.add_argument(
        "--eval-every",
        type=_positive_int,
        default=eval_every,
        help="evaluate on the validation rows (and --dev) every N steps"
        + (" (default: about 10 times a run)" if eval_every is None else ""),
    )
    p.add_argument("--save-every", type=_positive_int, default=50, help="checkpoint every N steps")
    p.add_argument(
        "--eval-k", type=_ks, default=(2, 5), help="k for Recall@k, nDCG@k (validation: mean nDCG@k): 2,5"
    )
    p.add_argument(
        "--max-document-tokens", type=_positive_int, default=128, help="reader tokens per document"
    )
    p.add_argument(
        "--reader-cache-gb",
        type=_non_negative_float,
        default=None,
        help="reuse the reader's document states across epochs and questions: keep up to this many GiB "
        "of them in memory on the reader's device (default: off; 2 with --reader-cache-dir)",
    )
    p.add_argument(
        "--reader-cache-dir",
        type=Path,
        default=None,
        help="spill document states beyond --reader-cache-gb to safetensors files here (at most 20 GiB); "
        "a resumed or later run with the same reader reuses them",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for data order, noise and initialisation")
    p.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 on a GPU that supports it, else fp32",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    guards = p.add_argument_group(
        "do-no-harm guards (keep what the starting reranker knows; docs/training.md, 'Do no harm')"
    )
    guards.add_argument(
        "--validation-fraction",
        type=_fraction,
        default=defaults.DEFAULT_VALIDATION_FRACTION,
        help="without --dev, the share of the training rows held out to pick the best checkpoint on and "
        "stop early (0: train on every row, keep the last step)",
    )
    guards.add_argument(
        "--no-select-best", action="store_true", help="save the last step, not the best validation one"
    )
    guards.add_argument(
        "--patience",
        type=int,
        default=defaults.DEFAULT_PATIENCE,
        help="stop after this many evaluations without a better validation score (0: never stop early)",
    )
    guards.add_argument(
        "--anchor-weight",
        type=_non_negative_float,
        default=defaults.DEFAULT_ANCHOR_WEIGHT,
        help="weight of a KL term keeping each question's ranking near the starting reranker's (0: off)",
    )
    guards.add_argument(
        "--start-decay",
        type=_non_negative_float,
        default=defaults.DEFAULT_START_DECAY,
        help="pull of the weights towards the starting ones after each step, times the lr (L2-SP; 0: off)",
    )
    guards.add_argument(
        "--interpolation",
        type=_fraction,
        default=defaults.DEFAULT_INTERPOLATION,
        help="save start + a * (trained - start) (WiSE-FT weight interpolation; 1: the trained weights)",
    )
    guards.add_argument(
        "--lora-rank",
        type=_positive_int,
        default=None,
        help="train rank-r LoRA adapters of the attention, merged into the saved model, not all weights",
    )


def _fraction(text: str) -> float:
    value = _finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _debug_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand without --debug keeps what the main parser set ("gumbel-rag --debug eval").
    parent.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"on an error, show the Python traceback instead of one 'error:' line (also {DEBUG_ENV}=1)",
    )
    return parent


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMAT_CHOICES, default="auto", help="input format (default: detect)")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip invalid rows instead of failing: the first few are printed with file:line and reason, "
        "all of them are written to --skipped-rows",
    )


def _add_skipped_rows_arg(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument(
        "--skipped-rows",
        type=Path,
        default=None,
        help=f"with --skip-invalid, where the list of skipped rows goes, one 'file:line: reason' a line "
        f"(default: {where}; written only when a row was skipped)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gumbel-rag`` and its subcommands."""
    debug = _debug_parent()
    parser = _Parser(
        prog="gumbel-rag",
        description="Fine-tune RAG rerankers end to end from question/answer pairs (Gumbel Reranking).",
        epilog="Run 'gumbel-rag COMMAND --help' for a command's options. The defaults ship as Python "
        "packages (no download); a hub model name is downloaded into the Hugging Face cache on first use "
        "unless --local-files-only or HF_HUB_OFFLINE=1. A mistake in the input or the options prints one "
        "'error:' line and exits with status 2 (--debug shows the traceback). Documentation: the docs/ "
        "site (mkdocs serve); its CLI page lists every option.",
        formatter_class=_HelpFormatter,
        parents=[debug],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="the command to run ('gumbel-rag COMMAND --help' for its options)",
        parser_class=functools.partial(_Parser, formatter_class=_HelpFormatter),
    )

    p = sub.add_parser(
        "rerank",
        help="rank documents for a query and print JSON",
        description="Score every document of --documents against --query and print a JSON list, best "
        "first, of {'rank': 1.., 'index': input position from 0, 'score': raw model units, 'document': "
        "the input row unchanged}. The document's own fields (a 'score' of yours included) stay inside "
        "'document', so nothing of yours is overwritten.",
        parents=[debug],
    )
    p.add_argument("--query", required=True, help="the query text")
    p.add_argument(
        "--documents",
        required=True,
        help="documents file, as 'mine --corpus' reads it: JSONL / JSON array / CSV / TSV / Parquet rows "
        "with 'text' (and optional 'title'; other fields are kept), JSON strings, or .txt (one document a "
        "line); '-' reads standard input (JSON, or plain text a document a line)",
    )
    p.add_argument("--top-k", type=_positive_int, default=None, help="keep the best N (default: all)")
    p.add_argument(
        "--score-threshold", type=_finite_float, default=None, help="drop documents scoring below this"
    )
    p.add_argument("--model", default=None, help="reranker name or path (default: all-MiniLM-L6-v2)")
    _add_model_args(p)

    p = sub.add_parser(
        "train",
        help="fine-tune a reranker from QA data through a frozen reader",
        description="Fine-tune a reranker from question/answer pairs: the relaxed top-k mask of its scores "
        "gates a frozen reader's attention to each document, and the reader's answer loss trains it. "
        "Writes the model, TensorBoard logs, metrics.jsonl, curves.png and checkpoints to --output.",
        parents=[debug],
    )
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        type=Path,
        help="training files (QA log / HotpotQA / MuSiQue / FiD-DPR; a directory stands for its files)",
    )
    p.add_argument("--dev", type=Path, default=None, help="labelled dev file for Recall@k during training")
    _add_data_args(p)
    _add_skipped_rows_arg(p, f"OUTPUT/{SKIPPED_ROWS_FILE}")
    p.add_argument("--reranker", default=None, help="reranker to start from (default: all-MiniLM-L6-v2)")
    p.add_argument("--output", required=True, type=Path, help="directory for the model, logs and checkpoints")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its newest complete checkpoint (refused if the run was "
        "started with other settings, loss, reader, starting model or data)",
    )
    p.add_argument(
        "--min-rating",
        type=_finite_float,
        default=None,
        help="train only on rows whose feedback rated them at least this (captured QA logs, "
        "QALogWriter.feedback); rows never rated are left out",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's model, checkpoints and logs in --output (refused without it)",
    )
    p.add_argument(
        "--allow-changed-settings",
        action="store_true",
        help="with --resume: continue even though the settings differ from the checkpoint's (warns)",
    )
    _add_train_args(p)
    _add_model_args(p)

    p = sub.add_parser(
        "eval",
        help="evaluate a reranker on labelled data (Recall@k, NDCG@k, MRR; answer EM/F1 with --answers)",
        description="Rank the candidates of every labelled question and report Recall@k, NDCG@k, MRR and "
        "indirect Recall@k (gold documents that do not contain the answer), and which rule gave the gold. "
        "With --answers the reader also answers every question from the reranker's top documents, scored "
        "by exact match and token F1. A BEIR folder (corpus.jsonl, queries.jsonl, qrels/) is evaluated "
        "by retrieving --top-n candidates per query with --retriever, gold from the qrels.",
        parents=[debug],
    )
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="labelled file (QA log with gold, HotpotQA, MuSiQue, FiD-DPR), or a BEIR folder or qrels file",
    )
    _add_data_args(p)
    _add_skipped_rows_arg(p, f"./{SKIPPED_ROWS_FILE}")
    p.add_argument("--reranker", default=None, help="reranker name or path (default: all-MiniLM-L6-v2)")
    p.add_argument("--k", type=_ks, default=(2, 5), help="k values, comma-separated (default 2,5)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument(
        "--answers",
        action="store_true",
        help="also let the reader answer from the reranker's top --answer-k documents and report EM and F1",
    )
    p.add_argument("--answer-k", type=_positive_int, default=5, help="documents the reader answers from")
    p.add_argument("--reader", default=None, help="reader for --answers (default: SmolLM2-135M-Instruct)")
    p.add_argument(
        "--max-document-tokens", type=_positive_int, default=128, help="reader tokens per document"
    )
    p.add_argument("--max-new-tokens", type=_positive_int, default=24, help="longest generated answer")
    _add_retrieval_args(p, top_n=100, what="BEIR folders: ")
    _add_model_args(p)

    p = sub.add_parser(
        "mine",
        help="add retrieved candidates to a QA log from a corpus",
        description="Retrieve candidates for each question of a QA log from a corpus (BM25 or dense) and "
        "write a QA log that 'gumbel-rag train' reads. A BEIR folder as --data brings its own corpus and "
        "its qrels as gold.",
        parents=[debug],
    )
    p.add_argument(
        "--data", required=True, type=Path, help="QA log without (or with) candidates, or a BEIR folder"
    )
    _add_data_args(p)
    _add_skipped_rows_arg(p, f"OUTPUT.{SKIPPED_ROWS_FILE}")
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="corpus: JSONL/CSV/Parquet with 'text', or .txt (required unless --data is a BEIR folder)",
    )
    p.add_argument("--output", required=True, type=Path, help="QA log JSONL to write, with candidates")
    _add_retrieval_args(p, top_n=10, what="")
    _add_hub_args(p)

    p = sub.add_parser(
        "demo",
        help="the main job: fine-tune the default reranker on generated multi-hop QA, Recall before/after",
        description="Generate a multi-hop QA log about fictional entities, measure the default reranker on "
        "a held-out split, fine-tune it through the default reader, measure again and save the model. "
        "It trains with the defaults of 'train', guards included (docs/training.md, 'The main job').",
        parents=[debug],
    )
    p.add_argument("--output", type=Path, default=Path("outputs/demo"), help="where the model and logs go")
    p.add_argument("--train-size", type=_positive_int, default=160, help="generated training questions")
    p.add_argument("--dev-size", type=_positive_int, default=60, help="generated held-out questions")
    # 40 steps: the validation split is scored at steps 0, 10, 20, 30, 40 (docs/training.md, "The main job").
    _add_train_args(p, eval_every=10)
    _add_model_args(p)
    p.set_defaults(save_every=20)
    return parser


def _add_retrieval_args(p: argparse.ArgumentParser, *, top_n: int, what: str) -> None:
    p.add_argument(
        "--retriever", choices=["bm25", "dense"], default="bm25", help=f"{what}how candidates are retrieved"
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="bi-encoder name or path for --retriever dense (default: all-MiniLM-L6-v2; a fine-tuned "
        "gumbel-rag bi-encoder works too)",
    )
    p.add_argument("--top-n", type=_positive_int, default=top_n, help=f"{what}candidates per question")


def _version() -> str:
    from gumbel_rag import __version__

    return __version__


# ----------------------------------------------------------------------------- cheap checks first


def _looks_like_path(name: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else that does not exist is a missing directory.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _check_model(name: str | None, option: str, *, file_suffixes: tuple[str, ...] = ()) -> None:
    """Refuse, before anything is loaded, a model option naming a file or a missing local directory."""
    from gumbel_rag.errors import ModelLoadError

    if name is None:
        return
    path = Path(name).expanduser()
    if path.is_file() and not path.name.lower().endswith(file_suffixes):
        expected = "a model directory" + "".join(f", a {s} file" for s in file_suffixes)
        raise ModelLoadError(f"{option} {name}: is a file; expected {expected} or a Hugging Face hub name")
    if not path.exists() and _looks_like_path(name):
        raise ModelLoadError(f"{option} {name}: no such model directory")


def _check_writable(directory: Path, option: str, target: Path) -> None:
    """Refuse an output whose directory cannot be created or written, before anything is loaded."""
    from gumbel_rag.errors import ConfigError

    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {target}: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gumbel-rag-write-test-", dir=existing)
    except OSError as exc:
        raise ConfigError(f"{option} {target}: cannot write in {existing} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def _check_output_dir(path: Path, option: str = "--output") -> None:
    from gumbel_rag.errors import ConfigError

    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file; expected a directory")
    _check_writable(path, option, path)


def _check_output_file(path: Path, option: str = "--output") -> None:
    from gumbel_rag.data.formats.qalog import container_of
    from gumbel_rag.errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; expected a file name")
    container_of(path)  # the extension must name a container write_qalog writes
    _check_writable(path.parent, option, path)


# ----------------------------------------------------------------------------- data and skipped rows


def _load(paths: Sequence[Path], fmt: str, skip_invalid: bool) -> tuple[list, Any]:
    from gumbel_rag.data import load_many

    return load_many(list(paths), format=fmt, skip_invalid=skip_invalid)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _report_skips(summary: Any, target: Path) -> Path | None:
    """Print the first skipped rows (file:line: reason) to stderr, write them all to ``target``."""
    from gumbel_rag.data.files import atomic_write_text

    messages = [_one_line(message) for _, _, message in summary.skipped_rows]
    if not messages:
        return None
    atomic_write_text(target, "".join(m + "\n" for m in messages))
    shown = messages[:SHOWN_SKIPS]
    print(f"skipped {len(messages)} row{'s' * (len(messages) != 1)}:", file=sys.stderr)
    for message in shown:
        print(f"  {message}", file=sys.stderr)
    more = f" ({len(messages) - len(shown)} more)" if len(messages) > len(shown) else ""
    print(f"  the full list{more}: {target}", file=sys.stderr)
    return target


def _gold_line(sources: dict[str, int]) -> str:
    if not sources:
        return "none (no row is labelled)"
    return "; ".join(f"{source} ({n} row{'s' * (n != 1)})" for source, n in sources.items())


# ----------------------------------------------------------------------------- commands


def _cmd_rerank(args: argparse.Namespace) -> int:
    from gumbel_rag.data.files import json_safe
    from gumbel_rag.data.formats.documents import load_documents

    documents = load_documents(args.documents)
    _check_model(args.model, "--model")
    from gumbel_rag import GumbelReranker  # torch: imported once the cheap checks have passed

    reranker = GumbelReranker.from_pretrained(
        args.model, device=args.device, trust_remote_code=args.trust_remote_code, **_hub_kwargs(args)
    )
    ranked = reranker.rerank(
        args.query,
        [d.candidate.content for d in documents],
        top_k=args.top_k,
        score_threshold=args.score_threshold,
    )
    out = [
        {"rank": rank, "index": r.index, "score": r.score, "document": documents[r.index].raw}
        for rank, r in enumerate(ranked, start=1)
    ]
    json.dump(json_safe(out), sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


def _loss_options(args: argparse.Namespace) -> dict[str, Any]:
    """The loss options the user gave, refusing flags that do not apply to --method."""
    from gumbel_rag.errors import ConfigError
    from gumbel_rag.losses import loss_options

    accepted = loss_options(args.method)
    given = {name: getattr(args, name) for name in LOSS_FLAGS if getattr(args, name, None) is not None}
    given.pop("noise", None)
    if getattr(args, "no_noise", False):
        given["noise"] = False
    wrong = [LOSS_FLAGS[name] for name in given if name not in accepted]
    if wrong:
        takes = ", ".join(LOSS_FLAGS[n] for n in accepted if n in LOSS_FLAGS) or "no loss options"
        raise ConfigError(f"{', '.join(wrong)} does not apply to --method {args.method} (it takes {takes})")
    return given


def _trainable(method: str, options: dict[str, Any], examples: list) -> tuple[list, Any]:
    """The rows the --method loss can learn from (its own rule; no model is loaded for this)."""
    from gumbel_rag.losses import LOSSES
    from gumbel_rag.trainer import trainable_examples

    return trainable_examples(functools.partial(LOSSES[method].row_problem, **options), examples)


def _build_loss(args: argparse.Namespace, reader: Any, reranker: Any) -> Any:
    """The training loss of --method with the loss options given on the command line (and its anchor)."""
    from gumbel_rag.losses import build_loss

    options = _loss_options(args)
    return build_loss(args.method, reader, anchor_to=reranker, anchor_weight=args.anchor_weight, **options)


def _train_config(args: argparse.Namespace, output: Path, resume: bool) -> Any:
    from gumbel_rag.trainer import TrainConfig

    return TrainConfig(
        output_dir=str(output),
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        eval_every=args.eval_every,
        save_every=args.save_every,
        eval_ks=args.eval_k,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        resume=resume,
        overwrite=getattr(args, "overwrite", False),
        allow_changed_settings=getattr(args, "allow_changed_settings", False),
        max_steps=args.max_steps,
        progress=not args.no_progress,
        validation_fraction=args.validation_fraction,
        select_best=not args.no_select_best,
        early_stopping_patience=args.patience or None,
        start_decay=args.start_decay,
        interpolation=args.interpolation,
        lora_rank=args.lora_rank,
    )


def _load_models(args: argparse.Namespace, reranker_name: str | None) -> tuple[Any, Any]:
    """The reranker to train and the frozen reader (None for methods that do not use one)."""
    from gumbel_rag import GumbelReranker

    reranker = GumbelReranker.from_pretrained(
        reranker_name, device=args.device, trust_remote_code=args.trust_remote_code, **_hub_kwargs(args)
    )
    if getattr(args, "method", "gumbel") == "supervised":
        return reranker, None
    return reranker, _load_reader(args)


def _load_reader(args: argparse.Namespace) -> Any:
    from gumbel_rag.readers import load_reader

    return load_reader(
        args.reader,
        device=args.device,
        max_document_tokens=args.max_document_tokens,
        trust_remote_code=args.trust_remote_code,
        state_cache=_state_cache(args),
        **_hub_kwargs(args),
    )


def _state_cache(args: argparse.Namespace) -> Any:
    """The DocumentStateCache that --reader-cache-gb / --reader-cache-dir ask for, or None."""
    gb, directory = getattr(args, "reader_cache_gb", None), getattr(args, "reader_cache_dir", None)
    if directory is None and not gb:
        return None
    from gumbel_rag.readers import DocumentStateCache
    from gumbel_rag.readers.state_cache import DEFAULT_STATE_CACHE_MEMORY_BYTES

    max_bytes = DEFAULT_STATE_CACHE_MEMORY_BYTES if gb is None else int(gb * 2**30)
    return DocumentStateCache(directory, max_bytes=max_bytes)


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith(("recall@", "mrr")))
    print(f"{title}: {shown} (n={int(metrics.get('n', 0))})")


def _nothing_to_train(method: str, loaded: Any, usable: Any) -> str:
    reasons = ", ".join(f"{n} {reason}" for reason, n in usable.skipped.items()) or "no rows"
    hint = " or lower --k" if method == "gumbel" else ""
    return (
        f"nothing to train: none of the {loaded.loaded} loaded rows can teach the {method} loss ({reasons}): "
        f"mine candidates first ('gumbel-rag mine'){hint}"
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from gumbel_rag.data import LoadSummary
    from gumbel_rag.errors import TrainingError

    _check_output_dir(args.output)
    options = _loss_options(args)  # a flag that does not apply to --method fails before anything loads
    examples, summary = _load(args.data, args.format, args.skip_invalid)
    print(f"loaded {summary}")
    if args.min_rating is not None:
        from gumbel_rag.data import filter_rated

        examples, rated = filter_rated(examples, args.min_rating)
        print(f"rated at least {args.min_rating:g}: {rated}")
        if not examples:
            raise TrainingError(
                f"nothing to train: no row is rated at least {args.min_rating:g} ({rated}); record "
                "ratings with QALogWriter.feedback, or lower --min-rating"
            )
    examples, usable = _trainable(args.method, options, examples)
    print(f"trainable with --method {args.method}: {usable}")
    dev, dev_summary = None, LoadSummary()
    if args.dev is not None:
        dev, dev_summary = _load([args.dev], args.format, args.skip_invalid)
        print(f"dev: {dev_summary}")
    # The rows left out as invalid; those that cannot teach are counted on the "trainable" line.
    _report_skips(summary.merge(dev_summary), args.skipped_rows or args.output / SKIPPED_ROWS_FILE)
    if not examples:
        raise TrainingError(_nothing_to_train(args.method, summary, usable))
    _check_model(args.reranker, "--reranker")
    if args.method != "supervised":
        _check_model(args.reader, "--reader", file_suffixes=(".gguf",))
    from gumbel_rag.trainer import train  # torch: imported once the cheap checks have passed

    reranker, reader = _load_models(args, args.reranker)
    loss = _build_loss(args, reader, reranker)
    result = train(reranker, loss, examples, _train_config(args, args.output, args.resume), dev)
    if result.initial_metrics:
        _print_metrics("dev before", result.initial_metrics)
    if result.final_metrics:
        _print_metrics("dev after ", result.final_metrics)
    print(f"{result.steps} steps ({result.skipped_steps} skipped), {result.seconds_per_step:.2f} s/step")
    if reader is not None and reader.state_cache is not None:
        reader.state_cache.flush()
        print(f"reader state cache: {json.dumps(reader.state_cache.stats())}")
    print(f"model: {result.model_dir}\nlogs: {result.log_dir} (tensorboard --logdir {result.log_dir})")
    print(f"curves: {result.curves_png}")
    return 0


def _retriever(args: argparse.Namespace, state: Any = None) -> Any:
    """What --retriever / --encoder ask for (checked by _check_retrieval): "bm25", or a loaded encoder."""
    if args.retriever != "dense":
        return args.retriever
    from gumbel_rag.reranker import GumbelReranker

    # Under a launcher every process encodes on its own device (its GPU), not all on the first one.
    device = state.device if state is not None else None
    return GumbelReranker.from_pretrained(args.encoder, kind="bi-encoder", device=device, **_hub_kwargs(args))


def _check_retrieval(args: argparse.Namespace) -> None:
    from gumbel_rag.errors import ConfigError

    if args.encoder is not None and args.retriever != "dense":
        raise ConfigError("--encoder needs --retriever dense")
    _check_model(args.encoder, "--encoder")


def _beir_examples(args: argparse.Namespace) -> tuple[list, Any, dict[str, Any]]:
    """A BEIR split with candidates retrieved by --retriever and gold from its qrels."""
    from gumbel_rag.data import mine_candidates
    from gumbel_rag.data.formats.beir import apply_qrels, candidate_recall, load_beir
    from gumbel_rag.errors import ConfigError

    if args.format != "auto":
        raise ConfigError(f"--format {args.format}: a BEIR folder has its own format; leave --format out")
    data = load_beir(args.data)
    _check_retrieval(args)
    _check_model(args.reranker, "--reranker")
    mined = mine_candidates(data.examples, data.corpus, _retriever(args), top_n=args.top_n)
    examples, summary = apply_qrels(mined)
    retrieval = {
        "qrels": str(data.qrels_file),
        "retriever": args.encoder or args.retriever,
        "top_n": args.top_n,
        "corpus_documents": len(data.corpus),
        "candidate_recall": candidate_recall(examples),
    }
    return examples, summary, retrieval


def _cmd_eval(args: argparse.Namespace) -> int:
    from gumbel_rag.data import DataError
    from gumbel_rag.data.files import json_safe
    from gumbel_rag.data.formats.beir import is_beir

    retrieval: dict[str, Any] | None = None
    if is_beir(args.data):
        examples, summary, retrieval = _beir_examples(args)
    else:
        examples, summary = _load([args.data], args.format, args.skip_invalid)
    skipped_file = _report_skips(summary, args.skipped_rows or Path(SKIPPED_ROWS_FILE))
    if not any(ex.gold for ex in examples) and not (args.answers and any(ex.answers for ex in examples)):
        msg = (
            f"no labelled rows to evaluate: none of the {len(examples)} loaded rows has a gold candidate "
            f"({summary.n_skipped} skipped); --answers scores answers without gold"
        )
        raise DataError(msg, path=str(args.data), reason="no labels")
    _check_model(args.reranker, "--reranker")
    if args.answers:
        _check_model(args.reader, "--reader", file_suffixes=(".gguf",))
    # torch: imported once the cheap checks have passed
    from gumbel_rag import GumbelReranker
    from gumbel_rag.evaluation import evaluate_answers, evaluate_reranker, rank_examples

    reranker = GumbelReranker.from_pretrained(
        args.reranker, device=args.device, trust_remote_code=args.trust_remote_code, **_hub_kwargs(args)
    )
    # One ranking pass serves both the ranking metrics and the reader's top-k.
    rankings = rank_examples(reranker, examples, progress=not args.json)
    metrics = evaluate_reranker(reranker, examples, ks=args.k, rankings=rankings)
    if args.answers:
        metrics.update(
            evaluate_answers(
                reranker,
                _load_reader(args),
                examples,
                k=args.answer_k,
                max_new_tokens=args.max_new_tokens,
                progress=not args.json,
                rankings=rankings,
            )
        )
    if not any(ex.answers for ex in examples if ex.gold):
        # Without answers no document is known to hold one, so every gold one would count as indirect.
        metrics = {k: v for k, v in metrics.items() if not k.startswith(("indirect_recall@", "n_indirect"))}
    if args.json:
        report = {
            "data": str(args.data),
            "reranker": args.reranker or "default",
            **({"retrieval": retrieval} if retrieval else {}),
            "loaded": summary.loaded,
            "skipped": summary.n_skipped,
            "skipped_by_reason": summary.skipped,
            "skipped_rows_file": None if skipped_file is None else str(skipped_file),
            "gold_source": summary.gold_sources,
            **metrics,
        }
        json.dump(json_safe(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"loaded {summary}")
    if retrieval:
        recall = retrieval["candidate_recall"]
        found = "n/a" if recall is None else f"{recall:.3f}"
        print(
            f"candidates: {retrieval['retriever']} top-{args.top_n} of {retrieval['corpus_documents']} "
            f"documents ({retrieval['qrels']}; share of the relevant documents retrieved: {found})"
        )
    print(f"gold: {_gold_line(summary.gold_sources)}")
    for key, value in metrics.items():
        print(f"{key:>20}  {value:.4f}" if isinstance(value, float) else f"{key:>20}  {value}")
    return 0


def _launcher_state() -> Any:
    """An accelerate PartialState when launched on several processes (torchrun / accelerate launch)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    # Split the questions, gather, write once. PartialState ignores ACCELERATE_USE_CPU unless told,
    # and CPU needs gloo.
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _cmd_mine(args: argparse.Namespace) -> int:
    from gumbel_rag.data import load_corpus, mine_candidates, write_qalog
    from gumbel_rag.data.formats.beir import apply_qrels, is_beir, load_beir
    from gumbel_rag.errors import ConfigError

    beir = is_beir(args.data)
    if beir and args.corpus is not None:
        raise ConfigError("--corpus: a BEIR folder brings its own corpus.jsonl; leave --corpus out")
    if beir and args.format != "auto":
        raise ConfigError(f"--format {args.format}: a BEIR folder has its own format; leave --format out")
    if not beir and args.corpus is None:
        raise ConfigError("--corpus is required (the documents to retrieve candidates from)")
    _check_output_file(args.output)
    _check_retrieval(args)
    if beir:
        data = load_beir(args.data)
        examples, corpus, summary = data.examples, data.corpus, data.summary
    else:
        examples, summary = _load([args.data], args.format, args.skip_invalid)
        corpus = load_corpus(args.corpus)
    state = _launcher_state()
    main_process = state is None or state.is_main_process
    if main_process:
        _report_skips(
            summary, args.skipped_rows or args.output.with_name(f"{args.output.name}.{SKIPPED_ROWS_FILE}")
        )
    mined = mine_candidates(examples, corpus, _retriever(args, state), top_n=args.top_n, accelerator=state)
    if beir:
        mined, _ = apply_qrels(mined)  # gold: the retrieved documents the qrels judge relevant
    if main_process:
        write_qalog(mined, args.output)
        print(f"mined {summary}; wrote {args.output}")
    if state is not None and state.num_processes > 1:
        # Nobody returns before the file exists, so a launched script can read it right after.
        state.wait_for_everyone()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gumbel_rag.demo import make_demo_data, run_demo

    _loss_options(args)
    train_set, dev_set = make_demo_data(args.output, args.train_size, args.dev_size, seed=args.seed)
    print("loading the default reranker (all-MiniLM-L6-v2) and reader (SmolLM2-135M-Instruct) ...")
    reranker, reader = _load_models(args, None)
    loss = _build_loss(args, reader, reranker)
    config = _train_config(args, args.output / "model", resume=False)
    config.overwrite = True  # the main job regenerates its data, so it replaces its earlier model too
    return run_demo(reranker, loss, config, train_set, dev_set, ks=tuple(args.eval_k), output=args.output)


COMMANDS = {
    "rerank": _cmd_rerank,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "mine": _cmd_mine,
    "demo": _cmd_demo,
}


def _debug(args: argparse.Namespace) -> bool:
    flag = os.environ.get(DEBUG_ENV, "").strip().lower()
    return bool(getattr(args, "debug", False)) or flag not in ("", "0", "false", "no")


def _error_line(exc: BaseException) -> str:
    """One line for a user error: the message, or for an OS error its file and the reason."""
    from gumbel_rag.errors import GumbelRagError

    if isinstance(exc, OSError) and not isinstance(exc, GumbelRagError) and exc.filename and exc.strerror:
        return _one_line(f"{exc.filename}: {exc.strerror}")
    return _one_line(str(exc)) or type(exc).__name__


def _hint(args: argparse.Namespace, exc: BaseException) -> str:
    from gumbel_rag.data import DataError

    if not isinstance(exc, DataError) or not exc.line or getattr(args, "skip_invalid", True):
        return ""
    data = args.data if isinstance(args.data, list) else [args.data]
    if args.command == "train" and args.dev is not None:
        data = [*data, args.dev]
    # Only rows of --data / --dev can be skipped (a corpus row cannot).
    if exc.path is not None and any(exc.path == str(p) or exc.path.startswith(f"{p}/") for p in data):
        return " (--skip-invalid skips such rows)"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gumbel-rag`` console script.

    A user error (GumbelRagError: bad data, a model that cannot be loaded, an option that cannot work;
    or an OSError: a file that is missing or cannot be written) prints one ``error:`` line to stderr and
    returns 2; ``--debug`` or GUMBEL_RAG_DEBUG=1 raises it with its traceback instead.
    """
    from gumbel_rag.errors import GumbelRagError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        code = COMMANDS[args.command](args)
    except (GumbelRagError, OSError) as exc:
        if _debug(args):
            raise
        print(f"error: {_error_line(exc)}{_hint(args, exc)}", file=sys.stderr)
        return 2
    if args.command in ("train", "demo"):
        print(f"done in {time.perf_counter() - start:.0f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
