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
