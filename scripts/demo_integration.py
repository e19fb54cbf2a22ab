"""The main job's last step: rerank a held-out question with the saved model through LangChain.

``scripts/demo.sh`` runs it after ``gumbel-rag demo``; it lives outside ``gumbel_rag/`` because the core
imports no framework. It uses the integration exactly as an application would: the saved model directory
goes to ``langchain_gumbel.GumbelRerank(model=...)``, which reranks LangChain ``Document`` objects.

    python scripts/demo_integration.py --model outputs/demo/model --data outputs/demo/data/dev.jsonl
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from langchain_core.documents import Document
from langchain_gumbel import GumbelRerank

TEXT_WIDTH = 88


def _documents(example) -> list[Document]:
    """The question's candidates as LangChain documents; metadata marks the gold ones for display."""
    gold = set(example.gold or [])
    return [
        Document(c.content, id=c.id or f"candidate-{i}", metadata={"gold": i in gold})
        for i, c in enumerate(example.candidates)
    ]


def _print_ranking(title: str, ranked: list[Document]) -> None:
    print(title)
    for rank, doc in enumerate(ranked, start=1):
        mark = "*" if doc.metadata.get("gold") else " "
        text = textwrap.shorten(doc.page_content, TEXT_WIDTH, placeholder=" ...")
        print(f"  {rank}. {doc.metadata['relevance_score']:8.3f} {mark} {text}")


def rerank_sample(
    model: Path, data: Path, *, index: int = 0, top_n: int = 3, compare_default: bool = False
) -> list[Document]:
    """Rerank question ``index`` of ``data`` with ``model`` through GumbelRerank; print and return it."""
    from gumbel_rag.data import load_examples

    examples, _ = load_examples(data)
    if not 0 <= index < len(examples):
        raise SystemExit(
            f"error: --index {index} is out of range for the {len(examples)} questions in {data}"
        )
    example = examples[index]
    documents = _documents(example)
    print(
        f"\nreranking a held-out question through LangChain (langchain_gumbel.GumbelRerank, model={model}):"
    )
    print(f"  Q: {example.question}")
    print(f"  A: {example.answer}   (* marks the {len(example.gold or [])} gold documents)")
    print(f"  {len(documents)} candidates; score = the model's raw score (metadata['relevance_score'])")
    if compare_default:
        before = GumbelRerank(top_n=top_n).compress_documents(documents, example.question)
        _print_ranking(f"top {top_n}, default all-MiniLM-L6-v2 before fine-tuning:", list(before))
    ranked = list(GumbelRerank(model=str(model), top_n=top_n).compress_documents(documents, example.question))
    _print_ranking(f"top {top_n}, fine-tuned:", ranked)
    return ranked


def main(argv: list[str] | None = None) -> int:
    """Command line of the script (see ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Rerank a held-out question with a saved model through the LangChain integration.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="saved model directory (gumbel-rag demo/train)"
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="QA log with candidates (the demo's dev.jsonl)"
    )
    parser.add_argument("--index", type=int, default=0, help="which question of --data to rerank")
    parser.add_argument("--top-n", type=int, default=3, help="documents to keep")
    parser.add_argument(
        "--compare-default", action="store_true", help="also rank with the default model, for contrast"
    )
    args = parser.parse_args(argv)
    if not args.model.is_dir():
        raise SystemExit(f"error: no model directory at {args.model} (did gumbel-rag demo finish?)")
    rerank_sample(
        args.model, args.data, index=args.index, top_n=args.top_n, compare_default=args.compare_default
    )
    print(
        "\nuse it in your RAG stack (the same directory works in every integration):\n"
        f'  LangChain   langchain_gumbel.GumbelRerank(model="{args.model}", top_n=3)\n'
        f'  LlamaIndex  llama_index.postprocessor.gumbel_rerank.GumbelRerank(model="{args.model}", top_n=3)\n'
        "  Haystack    haystack_integrations.components.rankers.gumbel.GumbelRanker("
        f'model="{args.model}", top_k=3)'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
