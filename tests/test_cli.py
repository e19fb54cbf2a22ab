"""The gumbel-rag command line, run in-process on tiny models and real files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gumbel_rag.cli import build_parser, main
from gumbel_rag.data import generate_multihop, load_examples, write_qalog


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("rerank", "train", "eval", "mine", "demo"):
        assert command in out
    for command in ("rerank", "train", "eval", "mine", "demo"):
        sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        assert all(action.help for action in sub._actions), f"{command} has an option without help"


def test_rerank_prints_json_keeping_fields(tiny_bi_encoder_dir, tmp_path, capsys) -> None:
    docs = tmp_path / "docs.jsonl"
    row = {"text": "with id", "id": "d2", "source": "wiki", "score": 7, "rank": "A"}
    docs.write_text(f'"plain text"\n{json.dumps(row)}\n\n"third"\n')
    assert (
        main(["rerank", "--query", "q", "--documents", str(docs), "--model", str(tiny_bi_encoder_dir)]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert sorted(r["index"] for r in out) == [0, 1, 2] and [r["rank"] for r in out] == [1, 2, 3]
    by_index = {r["index"]: r for r in out}
    # The input rows come back unchanged, their own 'score' and 'rank' included.
    assert by_index[1]["document"] == {
        "text": "with id",
        "id": "d2",
        "source": "wiki",
        "score": 7,
        "rank": "A",
    }
    assert by_index[0]["document"] == "plain text"
    assert [r["score"] for r in out] == sorted((r["score"] for r in out), reverse=True)
    assert main(["rerank", "--query", "q", "--documents", str(docs), "--top-k", "1",
                 "--model", str(tiny_bi_encoder_dir)]) == 0  # fmt: skip
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_rerank_bad_documents_name_the_line(tiny_bi_encoder_dir, tmp_path, capsys) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('"ok"\n{"title": "no text"}\n')
    args = ["rerank", "--query", "q", "--documents", str(docs), "--model", str(tiny_bi_encoder_dir)]
    assert main(args) == 2
    assert re.fullmatch(r"error: \S*docs\.jsonl:2: field 'text': missing[^\n]*\n", capsys.readouterr().err)
    docs.write_text('"ok"\n{broken\n')
    assert main(args) == 2
    assert re.fullmatch(r"error: \S*docs\.jsonl:2: malformed JSON[^\n]*\n", capsys.readouterr().err)


def test_top_k_must_be_positive(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["rerank", "--query", "q", "--documents", "x.jsonl", "--top-k", "0"])
    assert "must be >= 1" in capsys.readouterr().err


def test_train_then_eval(tiny_bi_encoder_dir, tiny_reader_dir, tmp_path, capsys) -> None:
    examples = generate_multihop(12, seed=5, n_candidates=4)
    write_qalog(examples[:8], tmp_path / "train.jsonl")
    write_qalog(examples[8:], tmp_path / "dev.jsonl")
    out_dir = tmp_path / "model"
    code = main([
        "train", "--data", str(tmp_path / "train.jsonl"), "--dev", str(tmp_path / "dev.jsonl"),
        "--reranker", str(tiny_bi_encoder_dir), "--reader", str(tiny_reader_dir), "--k", "2",
        "--batch-size", "2", "--grad-accum", "2", "--max-document-tokens", "16", "--lr", "1e-3",
        "--output", str(out_dir), "--no-progress", "--mixed-precision", "no",
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "dev before: recall@2" in out and "dev after : recall@2" in out
    assert "2 steps (0 skipped)" in out
    assert (out_dir / "logs" / "curves.png").is_file()

    assert main(["eval", "--data", str(tmp_path / "dev.jsonl"), "--reranker", str(out_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 4
    assert 0.0 <= metrics["recall@2"] <= 1.0 and "mrr" in metrics and "ndcg@5" in metrics


def test_train_reuses_reader_states_across_epochs(
    tiny_bi_encoder_dir, tiny_reader_dir, tmp_path, capsys
) -> None:
    write_qalog(generate_multihop(8, seed=5, n_candidates=4), tmp_path / "train.jsonl")
    cache_dir = tmp_path / "reader_states"
    args = [
        "train", "--data", str(tmp_path / "train.jsonl"), "--reranker", str(tiny_bi_encoder_dir),
        "--reader", str(tiny_reader_dir), "--k", "2", "--batch-size", "2", "--grad-accum", "2",
        "--max-document-tokens", "16", "--epochs", "2", "--validation-fraction", "0", "--no-progress",
        "--mixed-precision", "no", "--reader-cache-dir", str(cache_dir),
    ]  # fmt: skip
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    stats = json.loads(re.search(r"reader state cache: (\{.*\})", capsys.readouterr().out)[1])
    # Epoch 2 reads every document of epoch 1 back: as many hits as misses, all written to disk at the end.
    assert stats["misses"] > 0 and stats["hits"] >= stats["misses"]
    files = sorted(cache_dir.glob("**/*.safetensors"))
    assert len(files) == stats["disk_entries"] > 0
    # A later run with the same reader starts from the files: no document is encoded again.
    assert main([*args, "--output", str(tmp_path / "b")]) == 0
    again = json.loads(re.search(r"reader state cache: (\{.*\})", capsys.readouterr().out)[1])
    assert again["misses"] == 0 and again["disk_hits"] > 0


def test_train_reports_invalid_rows(tiny_bi_encoder_dir, tiny_reader_dir, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": 3, "candidates": ["a", "b", "c"]}\n')
    args = ["train", "--data", str(bad), "--output", str(tmp_path / "o"), "--reader", str(tiny_reader_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"error: \S*bad\.jsonl:1: field 'answer': .* \(--skip-invalid skips such rows\)\n", err
    )


def test_eval_on_hotpotqa_reports_recall(shared_data, tiny_bi_encoder_dir, capsys) -> None:
    path = shared_data / "hotpotqa" / "dev_distractor_100.json"
    assert main(["eval", "--data", str(path), "--reranker", str(tiny_bi_encoder_dir), "--k", "2,5"]) == 0
    out = capsys.readouterr().out
    assert "recall@2" in out and "recall@5" in out and "n_indirect" in out


def test_mine_adds_candidates(tmp_path: Path, capsys) -> None:
    (tmp_path / "corpus.txt").write_text(
        "The Zorblax river flows through Quenby.\nQuenby is a town of potters.\nBananas are yellow.\n"
    )
    (tmp_path / "qa.jsonl").write_text(
        '{"question": "Which river flows through Quenby?", "answer": "Zorblax"}\n'
    )
    code = main(["mine", "--data", str(tmp_path / "qa.jsonl"), "--corpus", str(tmp_path / "corpus.txt"),
                 "--output", str(tmp_path / "mined.jsonl"), "--top-n", "2"])  # fmt: skip
    assert code == 0
    (example,), _ = load_examples(tmp_path / "mined.jsonl")
    assert len(example.candidates) == 2
    assert "Zorblax river" in example.candidates[0].text


def test_train_supervised_needs_no_reader_and_pdist_trains(
    tiny_bi_encoder_dir, tiny_reader_dir, tmp_path, capsys
):
    examples = generate_multihop(8, seed=6, n_candidates=4)
    write_qalog(examples, tmp_path / "train.jsonl")
    common = [
        "train", "--data", str(tmp_path / "train.jsonl"), "--reranker", str(tiny_bi_encoder_dir),
        "--batch-size", "2", "--grad-accum", "2", "--max-document-tokens", "16", "--lr", "1e-3",
        "--no-progress", "--mixed-precision", "no",
    ]  # fmt: skip
    # A reader path that does not exist proves the supervised method never loads one.
    sup = tmp_path / "sup"
    assert (
        main([*common, "--method", "supervised", "--reader", str(tmp_path / "nope"), "--output", str(sup)])
        == 0
    )
    assert json.loads((sup / "logs" / "train_config.json").read_text())["loss"] == {
        "method": "supervised",
        "temperature": 1.0,
    }
    pdist = tmp_path / "pdist"
    assert main([*common, "--method", "pdist", "--reader", str(tiny_reader_dir), "--output", str(pdist)]) == 0
    assert "2 steps (0 skipped)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*common, "--method", "nope", "--output", str(tmp_path / "x")])
    # A loss option that does not apply to the method is refused before anything is loaded.
    capsys.readouterr()
    assert main([*common, "--method", "supervised", "--k", "2", "--output", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --k does not apply to --method supervised (it takes --temperature)\n"
    assert not (tmp_path / "y").exists()


def test_eval_answers_reports_em_and_f1(tiny_bi_encoder_dir, tiny_reader_dir, tmp_path, capsys) -> None:
    write_qalog(generate_multihop(3, seed=7, n_candidates=3), tmp_path / "dev.jsonl")
    args = ["eval", "--data", str(tmp_path / "dev.jsonl"), "--reranker", str(tiny_bi_encoder_dir), "--json"]
    extra = ["--answers", "--answer-k", "2", "--reader", str(tiny_reader_dir), "--max-new-tokens", "3"]
    assert main([*args, *extra]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_answers"] == 3 and 0.0 <= metrics["answer_f1@2"] <= 1.0 and "answer_em@2" in metrics
    assert main(args) == 0
    assert "answer_f1@2" not in json.loads(capsys.readouterr().out)
