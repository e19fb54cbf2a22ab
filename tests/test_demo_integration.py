"""The main job's integration step (scripts/demo_integration.py) on a tiny saved model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gumbel_rag.data import generate_multihop, write_qalog
from gumbel_rag.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "demo_integration.py"


def _script():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def dev_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "data" / "dev.jsonl"
    write_qalog(generate_multihop(3, seed=1), path)
    return path


def test_reranks_a_held_out_question_through_langchain_and_prints_scores(
    tiny_bi_encoder_dir: Path, dev_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = _script()
    assert demo.main(["--model", str(tiny_bi_encoder_dir), "--data", str(dev_file), "--index", "1"]) == 0
    out = capsys.readouterr().out
    example = generate_multihop(3, seed=1)[1]
    assert "langchain_gumbel.GumbelRerank" in out
    assert f"Q: {example.question}" in out
    lines = re.findall(r"^  (\d)\. +(-?\d+\.\d{3}) ([* ]) (.+)$", out, flags=re.MULTILINE)
    assert [int(rank) for rank, *_ in lines] == [1, 2, 3]
    scores = [float(score) for _, score, *_ in lines]
    assert scores == sorted(scores, reverse=True)
    # Every printed document is one of the question's candidates, marked gold exactly when it is.
    gold = {example.candidates[i].content[:40] for i in example.gold}
    contents = {c.content[:40] for c in example.candidates}
    for _, _, mark, text in lines:
        assert text[:40] in contents
        assert (mark == "*") == (text[:40] in gold)
    assert f'GumbelRerank(model="{tiny_bi_encoder_dir}"' in out


def test_returns_the_integrations_documents_best_first(tiny_bi_encoder_dir: Path, dev_file: Path) -> None:
    ranked = _script().rerank_sample(tiny_bi_encoder_dir, dev_file, index=0, top_n=5)
    assert len(ranked) == 5
    scores = [doc.metadata["relevance_score"] for doc in ranked]
    assert scores == sorted(scores, reverse=True)


def test_missing_model_or_question_is_a_clear_error(tiny_bi_encoder_dir: Path, dev_file: Path) -> None:
    demo = _script()
    with pytest.raises(SystemExit, match="no model directory"):
        demo.main(["--model", str(dev_file.parent / "nope"), "--data", str(dev_file)])
    with pytest.raises(SystemExit, match="out of range"):
        demo.main(["--model", str(tiny_bi_encoder_dir), "--data", str(dev_file), "--index", "7"])


def test_demo_sh_runs_it_on_the_demo_output() -> None:
    text = (ROOT / "scripts" / "demo.sh").read_text(encoding="utf8")
    assert "scripts/demo_integration.py" in text
    assert '"$OUTPUT/model"' in text and '"$OUTPUT/data/dev.jsonl"' in text
