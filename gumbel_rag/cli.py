"""The ``gumbel-rag`` command line: rerank, train, eval, mine and the demo (the README's main job)."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

FORMAT_CHOICES = ["auto", "qalog", "hotpotqa", "musique"]


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,5, got {text!r}") from exc
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"every k must be >= 1, got {text!r}")
    return ks


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from gumbel_rag.defaults import METHODS

    p.add_argument(
        "--method",
        choices=METHODS,
        default="gumbel",
        help="training loss: gumbel (G-Rerank), the distillation baselines emdr, pdist, loop, adist, or "
        "supervised (listwise loss on gold labels; needs labelled rows, no reader)",
    )
    p.add_argument("--reader", default=None, help="reader LLM name or path (default: SmolLM2-135M-Instruct)")
    p.add_argument("--k", type=_positive_int, default=5, help="documents the reader sees (relaxed top-k)")
    p.add_argument("--kappa", type=float, default=0.25, help="scale of the reranker scores before the noise")
    p.add_argument("--tau", type=float, default=1.0, help="temperature of the relaxed top-k")
    p.add_argument("--no-noise", action="store_true", help="ablation: no Gumbel noise")
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="baselines: temperature T of the reranker's distribution softmax(w / T)",
    )
    p.add_argument(
        "--teacher-temperature",
        type=float,
        default=1.0,
        help="pdist/loop/adist: temperature T' of the teacher distribution",
    )
    p.add_argument("--epochs", type=_positive_int, default=1, help="passes over the training data")
    p.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (linear warm-up and decay)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="questions per micro-batch")
    p.add_argument("--grad-accum", type=_positive_int, default=4, help="micro-batches per optimizer step")
    p.add_argument(
        "--max-steps",
        type=_positive_int,
        default=None,
        help="stop after this many optimizer steps (default: no limit)",
    )
    p.add_argument("--eval-every", type=_positive_int, default=50, help="evaluate on --dev every N steps")
    p.add_argument("--save-every", type=_positive_int, default=50, help="checkpoint every N steps")
    p.add_argument("--eval-k", type=_ks, default=(2, 5), help="k values for Recall@k, e.g. 2,5")
    p.add_argument(
        "--max-document-tokens", type=_positive_int, default=128, help="reader tokens per document"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for data order, noise and initialisation")
    p.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 on a GPU that supports it, else fp32",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gumbel-rag`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="gumbel-rag",
        description="Fine-tune RAG rerankers end to end from question/answer pairs (Gumbel Reranking).",
        epilog="Run 'gumbel-rag COMMAND --help' for a command's options. The defaults ship as Python "
        "packages (no download); a hub model name is downloaded into the Hugging Face cache on first use "
        "unless --local-files-only or HF_HUB_OFFLINE=1. Documentation: the docs/ site (mkdocs serve); its "
        "CLI page lists every option.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="the command to run ('gumbel-rag COMMAND --help' for its options)",
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_HelpFormatter),
    )

    p = sub.add_parser(
        "rerank",
        help="rank documents for a query and print JSON",
        description="Score every document of --documents against --query and print them as JSON, best "
        "first, each with its input fields, 'index' (input position) and 'score' (raw model units).",
    )
    p.add_argument("--query", required=True, help="the query text")
    p.add_argument(
        "--documents",
        required=True,
        type=Path,
        help="JSONL file: one document per line, a JSON string or an object with 'text' (other keys kept)",
    )
    p.add_argument("--top-k", type=_positive_int, default=None, help="keep the best N (default: all)")
    p.add_argument("--score-threshold", type=float, default=None, help="drop documents scoring below this")
    p.add_argument("--model", default=None, help="reranker name or path (default: all-MiniLM-L6-v2)")
    _add_model_args(p)

    p = sub.add_parser(
        "train",
        help="fine-tune a reranker from QA data through a frozen reader",
        description="Fine-tune a reranker from question/answer pairs: the relaxed top-k mask of its scores "
        "gates a frozen reader's attention to each document, and the reader's answer loss trains it. "
        "Writes the model, TensorBoard logs, metrics.jsonl, curves.png and checkpoints to --output.",
    )
    p.add_argument(
        "--data", nargs="+", required=True, type=Path, help="training files (QA log/HotpotQA/MuSiQue)"
    )
    p.add_argument("--dev", type=Path, default=None, help="labelled dev file for Recall@k during training")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="auto", help="input format (default: detect)")
    p.add_argument(
        "--skip-invalid", action="store_true", help="skip invalid rows (listed) instead of failing"
    )
    p.add_argument("--reranker", default=None, help="reranker to start from (default: all-MiniLM-L6-v2)")
    p.add_argument("--output", required=True, type=Path, help="directory for the model, logs and checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    _add_train_args(p)
    _add_model_args(p)

    p = sub.add_parser(
        "eval",
        help="evaluate a reranker on labelled data (Recall@k, NDCG@k, MRR; answer EM/F1 with --answers)",
        description="Rank the candidates of every labelled question and report Recall@k, NDCG@k, MRR and "
        "indirect Recall@k (gold documents that do not contain the answer). With --answers the reader also "
        "answers every question from the reranker's top documents, scored by exact match and token F1.",
    )
    p.add_argument(
        "--data", required=True, type=Path, help="labelled file (QA log with gold, HotpotQA, MuSiQue)"
    )
    p.add_argument("--format", choices=FORMAT_CHOICES, default="auto", help="input format (default: detect)")
    p.add_argument(
        "--skip-invalid", action="store_true", help="skip invalid rows (listed) instead of failing"
    )
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
    _add_model_args(p)

    p = sub.add_parser(
        "mine",
        help="add retrieved candidates to a QA log from a corpus",
        description="Retrieve candidates for each question of a QA log from a corpus (BM25 or dense) and "
        "write a QA log that 'gumbel-rag train' reads.",
    )
    p.add_argument("--data", required=True, type=Path, help="QA log without (or with) candidates")
    p.add_argument(
        "--corpus", required=True, type=Path, help="corpus: JSONL/CSV/Parquet with 'text', or .txt"
    )
    p.add_argument("--output", required=True, type=Path, help="QA log JSONL to write, with candidates")
    p.add_argument("--retriever", choices=["bm25", "dense"], default="bm25", help="how to retrieve")
    p.add_argument(
        "--encoder",
        default=None,
        help="bi-encoder name or path for --retriever dense (default: all-MiniLM-L6-v2; a fine-tuned "
        "gumbel-rag bi-encoder works too)",
    )
    p.add_argument("--top-n", type=_positive_int, default=10, help="candidates per question")
    _add_hub_args(p)

    p = sub.add_parser(
        "demo",
        help="the main job: fine-tune the default reranker on generated multi-hop QA, Recall before/after",
        description="Generate a multi-hop QA log about fictional entities, measure the default reranker on "
        "a held-out split, fine-tune it through the default reader, measure again and save the model. "
        "Its defaults differ from 'train' (gentler; see docs/training.md, 'The main job').",
    )
    p.add_argument("--output", type=Path, default=Path("outputs/demo"), help="where the model and logs go")
    p.add_argument("--train-size", type=_positive_int, default=160, help="generated training questions")
    p.add_argument("--dev-size", type=_positive_int, default=60, help="generated held-out questions")
    _add_train_args(p)
    _add_model_args(p)
    # A gentler rate than `train`: on the generated data the reader rewards every answer-type passage,
    # and a faster run trades the entity passage in the top 2 for them (docs/training.md, "The main job").
    p.set_defaults(k=2, kappa=1.0, tau=0.5, epochs=1, lr=5e-6, eval_every=10, save_every=20)
    return parser


def _version() -> str:
    from gumbel_rag import __version__

    return __version__


def _read_documents(path: Path) -> list[dict[str, Any]]:
    docs = []
    try:
        lines = path.read_text(encoding="utf8").splitlines()
    except UnicodeDecodeError as exc:
        raise SystemExit(f"error: {path}: not UTF-8 text ({exc})") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"error: {path}:{n}: invalid JSON ({exc.msg})") from exc
        if isinstance(row, str):
            row = {"text": row}
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise SystemExit(f"error: {path}:{n}: field 'text': expected a string")
        docs.append(row)
    return docs


def _cmd_rerank(args: argparse.Namespace) -> int:
    from gumbel_rag import GumbelReranker

    docs = _read_documents(args.documents)
    reranker = GumbelReranker.from_pretrained(
        args.model, device=args.device, trust_remote_code=args.trust_remote_code, **_hub_kwargs(args)
    )
    ranked = reranker.rerank(
        args.query, [d["text"] for d in docs], top_k=args.top_k, score_threshold=args.score_threshold
    )
    out = [{**docs[r.index], "index": r.index, "score": r.score} for r in ranked]
    json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


def _load(paths: Sequence[Path], fmt: str, skip_invalid: bool) -> tuple[list, Any]:
    from gumbel_rag.data import DataError, load_many

    try:
        return load_many(list(paths), format=fmt, skip_invalid=skip_invalid)
    except DataError as exc:
        raise SystemExit(f"error: {exc}\n(use --skip-invalid to skip invalid rows)") from exc


def _train_config(args: argparse.Namespace, output: Path, resume: bool) -> Any:
    from gumbel_rag.trainer import TrainConfig

    return TrainConfig(
        output_dir=str(output),
        method=args.method,
        k=args.k,
        kappa=args.kappa,
        tau=args.tau,
        noise=not args.no_noise,
        temperature=args.temperature,
        teacher_temperature=args.teacher_temperature,
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
        max_steps=args.max_steps,
        progress=not args.no_progress,
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
        **_hub_kwargs(args),
    )


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith(("recall@", "mrr")))
    print(f"{title}: {shown} (n={int(metrics.get('n', 0))})")


def _cmd_train(args: argparse.Namespace) -> int:
    from gumbel_rag.data import filter_trainable
    from gumbel_rag.trainer import train

    examples, summary = _load(args.data, args.format, args.skip_invalid)
    print(f"loaded {summary}")
    examples, usable = filter_trainable(examples, args.k)
    print(f"trainable with k={args.k}: {usable}")
    dev = None
    if args.dev is not None:
        dev, dev_summary = _load([args.dev], args.format, args.skip_invalid)
        print(f"dev: {dev_summary}")
    reranker, reader = _load_models(args, args.reranker)
    result = train(reranker, reader, examples, _train_config(args, args.output, args.resume), dev)
    if result.initial_metrics:
        _print_metrics("dev before", result.initial_metrics)
    if result.final_metrics:
        _print_metrics("dev after ", result.final_metrics)
    print(f"{result.steps} steps ({result.skipped_steps} skipped), {result.seconds_per_step:.2f} s/step")
    print(f"model: {result.model_dir}\nlogs: {result.log_dir} (tensorboard --logdir {result.log_dir})")
    print(f"curves: {result.curves_png}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from gumbel_rag import GumbelReranker
    from gumbel_rag.evaluation import evaluate_answers, evaluate_reranker, rank_examples

    examples, summary = _load([args.data], args.format, args.skip_invalid)
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
    if args.json:
        json.dump(
            {"data": str(args.data), "reranker": args.reranker or "default", **metrics}, sys.stdout, indent=2
        )
        sys.stdout.write("\n")
        return 0
    print(f"loaded {summary}")
    if not metrics.get("n") and not metrics.get("n_answers"):
        print("no labelled examples (gold documents) to evaluate")
        return 1
    for key, value in metrics.items():
        print(f"{key:>20}  {value:.4f}" if isinstance(value, float) else f"{key:>20}  {value}")
    return 0


def _cmd_mine(args: argparse.Namespace) -> int:
    import os

    from gumbel_rag.data import DataError, mine_file

    state = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Launched on several processes (torchrun / accelerate launch): split the questions, gather,
        # write once. PartialState ignores ACCELERATE_USE_CPU unless told, and CPU needs gloo.
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    retriever: Any = args.retriever
    if args.encoder is not None and args.retriever != "dense":
        raise SystemExit("error: --encoder needs --retriever dense")
    if args.retriever == "dense":
        from gumbel_rag.reranker import GumbelReranker

        # Under a launcher every process encodes on its own device (its GPU), not all on the first one.
        device = state.device if state is not None else None
        retriever = GumbelReranker.from_pretrained(
            args.encoder, kind="bi-encoder", device=device, **_hub_kwargs(args)
        )
    try:
        summary = mine_file(
            args.data, args.corpus, args.output, retriever=retriever, top_n=args.top_n, accelerator=state
        )
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if state is None or state.is_main_process:
        print(f"mined {summary}; wrote {args.output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gumbel_rag.demo import run_demo

    return run_demo(args)


COMMANDS = {
    "rerank": _cmd_rerank,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "mine": _cmd_mine,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gumbel-rag`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    code = COMMANDS[args.command](args)
    if args.command in ("train", "demo"):
        print(f"done in {time.perf_counter() - start:.0f} s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
