"""Answer EM/F1: the SQuAD scoring rules, greedy generation, and the reader answering from the top-k."""

from __future__ import annotations

from pathlib import Path

import pytest

from gumbel_rag import GumbelReranker
from gumbel_rag.data import generate_multihop
from gumbel_rag.evaluation import (
    answer_exact_match,
    answer_f1,
    evaluate_answers,
    evaluate_reranker,
    rank_examples,
)
from gumbel_rag.readers import load_reader


@pytest.fixture(scope="module")
def reader(tiny_reader_dir: Path):
    return load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=24)


@pytest.mark.parametrize(
    ("prediction", "answers", "em", "f1"),
    [
        ("The Eiffel Tower!", ["eiffel tower"], 1.0, 1.0),
        ("Paris, France", ["Paris"], 0.0, 2 / 3),
        ("in 1889", ["1887", "in 1889"], 1.0, 1.0),
        ("blue", ["red"], 0.0, 0.0),
        ("", ["red"], 0.0, 0.0),
        ("the", ["a"], 1.0, 1.0),  # both normalise to nothing
    ],
)
def test_squad_exact_match_and_f1(prediction: str, answers: list[str], em: float, f1: float) -> None:
    assert answer_exact_match(prediction, answers) == em
    assert answer_f1(prediction, answers) == pytest.approx(f1)


def test_batched_generation_equals_one_question_at_a_time(reader) -> None:
    questions = ["Who built the tower?", "Where was Ada Moss born, and when did she leave it?"]
    documents = [["The tower was built by Ivo Lund."], ["Ada Moss was born in Tarsk.", "Cats purr.", "x"]]
    batched = reader.generate(questions, documents, max_new_tokens=6)
    alone = [
        reader.generate([q], [d], max_new_tokens=6)[0] for q, d in zip(questions, documents, strict=True)
    ]
    assert batched == alone
    assert all(isinstance(a, str) for a in batched) and any(batched)


def test_evaluate_answers_reads_the_rerankers_top_k(tiny_bi_encoder_dir, reader) -> None:
    examples = generate_multihop(5, seed=2, n_candidates=4)
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    metrics = evaluate_answers(reranker, reader, examples, k=2, max_new_tokens=4, batch_size=2)
    assert metrics["n_answers"] == 5
    assert set(metrics) == {"answer_em@2", "answer_f1@2", "n_answers"}

    rankings = rank_examples(reranker, examples)
    predictions = reader.generate(
        [ex.question for ex in examples],
        [[ex.candidates[i].content for i in r[:2]] for ex, r in zip(examples, rankings, strict=True)],
        max_new_tokens=4,
    )
    f1 = sum(answer_f1(p, ex.answers) for p, ex in zip(predictions, examples, strict=True)) / 5
    assert metrics["answer_f1@2"] == pytest.approx(f1)


def test_precomputed_rankings_are_used_as_given(tiny_bi_encoder_dir, reader) -> None:
    examples = generate_multihop(6, seed=4, n_candidates=4)
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    rankings = rank_examples(reranker, examples)
    assert evaluate_reranker(reranker, examples, rankings=rankings) == evaluate_reranker(reranker, examples)

    # Reversed rankings must change what is measured: the metrics follow the rankings passed in.
    reversed_ = [list(reversed(r)) for r in rankings]
    assert evaluate_reranker(reranker, examples, rankings=reversed_)["mrr"] != pytest.approx(
        evaluate_reranker(reranker, examples)["mrr"]
    )
    metrics = evaluate_answers(reranker, reader, examples, k=1, max_new_tokens=4, rankings=reversed_)
    predictions = reader.generate(
        [ex.question for ex in examples],
        [[ex.candidates[r[0]].content] for ex, r in zip(examples, reversed_, strict=True)],
        max_new_tokens=4,
    )
    f1 = sum(answer_f1(p, ex.answers) for p, ex in zip(predictions, examples, strict=True)) / len(examples)
    assert metrics["answer_f1@1"] == pytest.approx(f1)


def test_precomputed_rankings_that_do_not_fit_are_refused(tiny_bi_encoder_dir, reader) -> None:
    examples = generate_multihop(3, seed=5, n_candidates=4)
    reranker = GumbelReranker.from_pretrained(tiny_bi_encoder_dir)
    with pytest.raises(ValueError, match="2 entries for 3 examples"):
        evaluate_reranker(reranker, examples, rankings=[[0, 1, 2, 3]] * 2)
    with pytest.raises(ValueError, match=r"rankings\[1\] is not a permutation of the 4 candidates"):
        evaluate_answers(reranker, reader, examples, rankings=[[0, 1, 2, 3], [0, 0, 1, 2], [3, 2, 1, 0]])
