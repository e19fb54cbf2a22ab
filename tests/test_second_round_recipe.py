"""training/second_round.py: the second-round ranking rule, and the experiment on real HotpotQA files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gumbel_rag import GumbelReranker
from gumbel_rag.data import load_examples
from gumbel_rag.evaluation import evaluate_reranker
from gumbel_rag.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    return load_script(ROOT / "training" / "second_round.py")


def test_first_pick_stays_first_and_the_weight_moves_the_rest() -> None:
    rank = _recipe().second_round_ranking
    first, second = [0.9, 0.5, 0.4, 0.1], [0.0, 0.0, 1.0, 0.2]
    assert rank(first, second, 0.0) == [0, 1, 2, 3]  # w = 0: the first round's order
    assert rank(first, second, 1.0) == [0, 2, 3, 1]  # w = 1: the second round orders all but the top
    assert rank(first, second, 0.3) == [0, 2, 1, 3]  # 0.58 > 0.35 > 0.13


def test_the_weight_is_chosen_on_recall_with_the_smaller_weight_among_equals() -> None:
    choose = _recipe().choose
    table = {0.0: {"recall@2": 0.6, "recall@5": 0.8}, 0.2: {"recall@2": 0.7, "recall@5": 0.7},
             0.5: {"recall@2": 0.65, "recall@5": 0.8}}  # fmt: skip
    assert choose(table) == 0.5  # 0.70, 0.70, 0.725
    table[0.5]["recall@5"] = 0.75
    assert choose(table) == 0.0  # three ties at 0.70: the smallest weight


def test_runs_on_hotpotqa_files(shared_data, tiny_bi_encoder_dir, tmp_path) -> None:
    out = tmp_path / "second_round.json"
    files = shared_data / "hotpotqa"
    result = _recipe().main(["--choose-on", str(files / "train_distractor_100.json"), "--evaluate-on",
                             str(files / "dev_distractor_100.json"), "--reranker", str(tiny_bi_encoder_dir),
                             "--weights", "0", "1", "--json", str(out)])  # fmt: skip
    assert result["chosen_weight"] in (0.0, 1.0)
    # w = 0 is the plain reranker: the same numbers as evaluating it directly.
    plain = evaluate_reranker(GumbelReranker.from_pretrained(str(tiny_bi_encoder_dir)).eval(),
                              load_examples(files / "dev_distractor_100.json")[0], ks=(2, 5))  # fmt: skip
    for key in ("recall@2", "recall@5", "mrr", "indirect_recall@5"):
        assert result["evaluate_on"]["0.0"][key] == pytest.approx(plain[key], rel=1e-6)
    assert json.loads(out.read_text()) == result


def test_two_round_scores_rank_as_the_rule_and_train_both_rounds() -> None:
    import torch

    recipe = _recipe()
    gen = torch.Generator().manual_seed(0)
    first = torch.randn(3, 6, generator=gen, requires_grad=True)
    second = torch.randn(3, 6, generator=gen, requires_grad=True)
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[2, 4:] = False  # a shorter list, padded
    scores = recipe.two_round_scores(first, second, valid, 0.3)
    for b in range(3):
        n = int(valid[b].sum())
        got = sorted(range(n), key=lambda i, b=b: -scores[b, i].item())
        assert got == recipe.second_round_ranking(first[b, :n].tolist(), second[b, :n].tolist(), 0.3)
    scores[valid].sum().backward()
    assert first.grad is not None and second.grad is not None
    assert first.grad.abs().sum() > 0 and second.grad.abs().sum() > 0


@pytest.mark.parametrize("model", ["tiny_bi_encoder_dir", "tiny_cross_encoder_dir"])
def test_two_round_reranker_ranks_as_the_untrained_experiment_and_forward_agrees(model, request) -> None:
    import torch

    recipe = _recipe()
    model_dir = str(request.getfixturevalue(model))
    plain = GumbelReranker.from_pretrained(model_dir).eval()
    two = recipe.TwoRoundReranker.from_pretrained(model_dir).eval()
    two.weight = 0.4
    queries = ["who wrote the novel", "which river is longer"]
    docs = [["a novel by Ann", "Ann was born in Oslo", "rivers", "a poem"], ["the Nile", "the Amazon", "x"]]
    first = plain.score_batch(queries, docs)
    second = plain.score_batch([f"{q} {d[max(range(len(s)), key=s.__getitem__)]}" for q, d, s in
                                zip(queries, docs, first, strict=True)], docs)  # fmt: skip
    for scores, f, s in zip(two.score_batch(queries, docs), first, second, strict=True):
        assert sorted(range(len(scores)), key=lambda i, s=scores: -s[i]) == recipe.second_round_ranking(
            f, s, 0.4
        )
    with torch.no_grad():
        forward, valid = two(queries, docs)
    for b, scores in enumerate(two.score_batch(queries, docs)):
        torch.testing.assert_close(forward[b, : len(scores)], torch.tensor(scores), rtol=1e-4, atol=1e-4)
    assert valid.tolist()[1] == [True, True, True, False]


def test_trained_second_round_writes_compare_rows_the_bootstrap_reads(
    shared_data, tiny_bi_encoder_dir, tiny_reader_dir, tmp_path
) -> None:
    common = [
        "--data-dir", str(shared_data / "hotpotqa"), "--no-retrieved", "--train-limit", "24",
        "--dev-limit", "6", "--max-document-tokens", "16", "--reranker", str(tiny_bi_encoder_dir),
        "--reader", str(tiny_reader_dir), "--device", "cpu", "--max-steps", "2", "--batch-size", "2",
        "--validation-distractor", "6", "--seeds", "0", "--output", str(tmp_path / "runs"),
    ]  # fmt: skip
    load_script(ROOT / "training" / "compare.py").main(
        [*common, "--methods", "gumbel", "--no-answers", "--report", str(tmp_path / "r.md"),
         "--figure", str(tmp_path / "r.png")]
    )  # fmt: skip
    trained = load_script(ROOT / "training" / "second_round_trained.py")
    (row,) = trained.main([*common, "--weights", "0", "0.5"])
    assert row["name"] == "gumbel-2round-seed0" and row["second_round_weight"] in (0.0, 0.5)
    assert row["guard"] == "distractor-6" and row["validation_rows"] == 6 and row["steps"] == 2
    assert row["metrics"] == row["dev_by_weight"][str(row["second_round_weight"])]
    assert trained.main([*common, "--weights", "0", "0.5"]) == []  # done: a rerun trains nothing
    # The bootstrap reads the two-round scores this script wrote, next to the plain G-Rerank run's.
    sig_args = [
        "--output", str(tmp_path / "runs"), "--data-dir", str(shared_data / "hotpotqa"), "--dev-limit", "6",
        "--reranker", str(tiny_bi_encoder_dir), "--device", "cpu", "--resamples", "50",
        "--reference", "gumbel-2round", "--against", "gumbel,untrained",
    ]  # fmt: skip
    significance = load_script(ROOT / "training" / "significance.py")
    assert set(significance.main(sig_args)) == {"gumbel", "untrained"}
    # Without them it refuses to score the saved weights as a plain reranker.
    (tmp_path / "runs" / "per_question.jsonl").unlink()
    with pytest.raises(SystemExit, match="gumbel-2round-seed0: its scores come from training/second_round"):
        significance.main(sig_args)
