"""One G-Rerank training step against its floor, the naive single pass and a LOOP step.

    python -m benchmarks.training_step           # default reader (SmolLM2-135M) + all-MiniLM-L6-v2
    python -m benchmarks.training_step --quick   # tiny random models (what CI runs)

Steps, each on one HotpotQA training row (question, answer, its 10 paragraphs):

- floor: the reranker's forward and backward plus one no-grad reader forward over the documents
  (``reader.prepare``); no method can do less.
- grerank: reranker forward, ``reader.prepare`` (document keys/values without grad), Gumbel relaxed
  top-k mask, the reader's answer pass over the cached keys with grad, backward.
- single_pass: reranker forward, one reader forward+backward over every token (documents included)
  with a 4-D mask (``answer_loss_single_pass``; its document tokens are tokenized beforehand, untimed).
- loop: reranker forward, ``reader.prepare``, N no-grad leave-one-out answer passes, KL, backward.

Times are medians of interleaved rounds and ratios are paired per round against the floor.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    DocumentSource,
    interleaved,
    load_hotpot,
    machine,
    markdown_table,
    median,
    paired_ratio,
    paragraphs,
    peak_memory,
    tiny_bi_encoder,
    tiny_reader,
    write_json,
)


@dataclass
class Example:
    """One training row."""

    question: str
    answer: str
    documents: list[str]


def hotpot_examples(
    n_rows: int, n_docs: int, doc_tokens: int | None, source: DocumentSource
) -> list[Example]:
    """Training rows with ``n_docs`` candidates each: the row's paragraphs, topped up from other rows.

    With ``doc_tokens`` every document is instead a stretch of exactly that many (reranker) tokens of
    HotpotQA text, so document length is controlled.
    """
    rows = load_hotpot("train_distractor_100.json") or load_hotpot("dev_distractor_100.json")
    examples = []
    for r in range(n_rows):
        if rows:
            row = rows[r % len(rows)]
            question, answer = row["question"], row["answer"]
            docs = paragraphs(row)
            extra = r + 1
            while len(docs) < n_docs:
                docs += paragraphs(rows[extra % len(rows)])
                extra += 1
        else:
            question, answer, docs = f"question {r}?", "an answer", [source.take(60) for _ in range(n_docs)]
        docs = docs[:n_docs]
        if doc_tokens is not None:
            docs = [source.take(doc_tokens) for _ in range(n_docs)]
        examples.append(Example(question, answer, docs))
    return examples


def step_functions(
    reranker: Any, reader: Any, examples: list[Example], seed: int = 0
) -> dict[str, Callable[[], Any]]:
    """A zero-argument callable per variant; each call trains on the next example (cycling)."""
    from gumbel_rag.losses import GumbelRerankLoss

    try:
        from gumbel_rag.losses.loop import LOOPLoss
    except ImportError:  # pragma: no cover - LOOP lands separately; the benchmark still runs without it
        LOOPLoss = None

    g_loss = GumbelRerankLoss(reader)
    generator = torch.Generator().manual_seed(seed)
    # The single pass needs the batch's token layout; preparing it is not part of that step's cost.
    prepared = {}

    def cycle(name: str) -> Callable[[], Example]:
        state = {"i": 0}

        def nxt() -> Example:
            ex = examples[state["i"] % len(examples)]
            state["i"] += 1
            return ex

        return nxt

    def rerank(ex: Example) -> tuple[torch.Tensor, torch.Tensor]:
        return reranker([ex.question], [ex.documents])

    next_floor, next_g, next_single, next_loop = (cycle(n) for n in ("floor", "g", "single", "loop"))

    def floor() -> None:
        ex = next_floor()
        scores, _ = rerank(ex)
        scores.sum().backward()
        with torch.no_grad():
            reader.prepare([ex.question], [ex.documents], [ex.answer])
        reranker.zero_grad(set_to_none=True)

    def grerank() -> None:
        ex = next_g()
        scores, valid = rerank(ex)
        batch = reader.prepare([ex.question], [ex.documents], [ex.answer])
        g_loss(scores, valid, batch, generator=generator).backward()
        reranker.zero_grad(set_to_none=True)

    def single_pass() -> None:
        ex = next_single()
        key = id(ex)
        if key not in prepared:
            prepared[key] = reader.prepare([ex.question], [ex.documents], [ex.answer])
        scores, valid = rerank(ex)
        from gumbel_rag.gumbel import relaxed_topk_log_mask

        log_mask = relaxed_topk_log_mask(
            scores.float(), g_loss.k, kappa=g_loss.kappa, tau=g_loss.tau, mask=valid, generator=generator
        )
        reader.answer_loss_single_pass(prepared[key], log_mask.to(reader.device)).mean().backward()
        reranker.zero_grad(set_to_none=True)

    fns: dict[str, Callable[[], Any]] = {"floor": floor, "grerank": grerank, "single_pass": single_pass}
    if LOOPLoss is not None:
        loop_loss = LOOPLoss(reader)

        def loop() -> None:
            ex = next_loop()
            scores, valid = rerank(ex)
            batch = reader.prepare([ex.question], [ex.documents], [ex.answer])
            loop_loss(scores, valid, batch, generator=generator).backward()
            reranker.zero_grad(set_to_none=True)

        fns["loop"] = loop
    # Pre-tokenize the single pass's batches so its first timed rounds are not charged for it.
    for ex in examples:
        prepared[id(ex)] = reader.prepare([ex.question], [ex.documents], [ex.answer])
    return fns


def measure(fns: dict[str, Callable[[], Any]], rounds: int) -> list[dict[str, Any]]:
    """Interleaved step times, ratios to the floor and one peak-memory pass per variant."""
    times = interleaved(fns, rounds)
    rows = []
    for name, fn in fns.items():
        with peak_memory() as mem:
            fn()
        rows.append(
            {
                "step": name,
                "seconds": median(times[name]),
                "x_floor": paired_ratio(times, name, "floor"),
                "peak_mb": mem["peak_mb"],
            }
        )
    return rows


def load_models(quick: bool, tmp: Path, max_document_tokens: int) -> tuple[Any, Any]:
    """The reranker (train mode) and the frozen reader: the packaged defaults, or tiny ones for --quick."""
    from gumbel_rag import GumbelReranker
    from gumbel_rag.readers import DecoderReader, load_reader

    if quick:
        reranker = GumbelReranker.from_pretrained(tiny_bi_encoder(tmp))
        reader = DecoderReader.from_pretrained(str(tiny_reader(tmp)), max_document_tokens=max_document_tokens)
    else:
        reranker = GumbelReranker.from_pretrained()
        reader = load_reader(max_document_tokens=max_document_tokens)
    return reranker.train(), reader


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the training-step benchmark and print a markdown table; returns the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny random models and few rounds (CI)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 8, quick 2)")
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--max-document-tokens", type=int, default=128)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 8)
    warnings.filterwarnings("ignore", message=".*were truncated")

    from transformers import AutoTokenizer

    from gumbel_rag.defaults import default_reranker_path

    with tempfile.TemporaryDirectory() as tmp:
        reranker, reader = load_models(args.quick, Path(tmp), args.max_document_tokens)
        source = DocumentSource(AutoTokenizer.from_pretrained(str(default_reranker_path())))
        examples = hotpot_examples(4 if args.quick else 8, args.candidates, None, source)
        rows = measure(step_functions(reranker, reader, examples), rounds)
    print(markdown_table(rows, ["step", "seconds", "x_floor", "peak_mb"]))
    results = {
        "machine": machine(),
        "quick": args.quick,
        "candidates": args.candidates,
        "max_document_tokens": args.max_document_tokens,
        "rounds": rounds,
        "rows": rows,
    }
    print(f"machine: {results['machine']}")
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
