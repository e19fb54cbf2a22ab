"""Every user error on the command line: one 'error:' line, exit status 2, found before any model loads."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gumbel_rag.cli import main
from gumbel_rag.data import generate_multihop, write_qalog

# A model path that does not exist: a command that stops on it loaded nothing before failing, and a
# command that fails on something else shows that it checked that thing first.
NO_MODEL = "/nonexistent/model-dir"


def _one_error(capsys: pytest.CaptureFixture[str], pattern: str) -> str:
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: {pattern}\n", err), err
    return err


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "dev.jsonl"
    write_qalog(generate_multihop(4, seed=1, n_candidates=4), path)
    return path


def test_missing_files_and_directories(tmp_path: Path, log: Path, capsys) -> None:
    assert main(["rerank", "--query", "q", "--documents", str(tmp_path / "missing.jsonl")]) == 2
    _one_error(capsys, r"no such documents file: \S*missing\.jsonl")
    assert main(["rerank", "--query", "q", "--documents", str(tmp_path)]) == 2
    _one_error(capsys, r"\S+ is a directory; expected a documents file")
    assert main(["eval", "--data", str(tmp_path / "nope.jsonl")]) == 2
    _one_error(capsys, r"no such data file: \S*nope\.jsonl")
    out = str(tmp_path / "mined.jsonl")
    assert main(["mine", "--data", str(log), "--corpus", str(tmp_path / "nope.jsonl"), "--output", out]) == 2
    _one_error(capsys, r"no such corpus file: \S*nope\.jsonl")
    assert main(["mine", "--data", str(log), "--corpus", str(log), "--output", str(tmp_path)]) == 2
    _one_error(capsys, r"--output \S+: is a directory; expected a file name")


def test_model_that_is_a_file_or_missing(tmp_path: Path, log: Path, capsys) -> None:
    docs = tmp_path / "docs.txt"
    docs.write_text("one document\nanother\n")
    assert main(["rerank", "--query", "q", "--documents", str(docs), "--model", str(docs)]) == 2
    _one_error(
        capsys, r"--model \S+docs\.txt: is a file; expected a model directory or a Hugging Face hub name"
    )
    assert main(["eval", "--data", str(log), "--reranker", NO_MODEL]) == 2
    _one_error(capsys, r"--reranker /nonexistent/model-dir: no such model directory")
    assert main(["eval", "--data", str(log), "--answers", "--reader", str(docs)]) == 2
    _one_error(capsys, r"--reader \S+docs\.txt: is a file; expected a model directory, a \.gguf file or .*")
    # A hub name that cannot be had (offline here): the loader's error, as one line.
    assert main(["eval", "--data", str(log), "--reranker", "nobody/no-such-model"]) == 2
    _one_error(capsys, r".*'nobody/no-such-model'.*")


def test_nothing_to_train_is_found_before_any_model(tmp_path: Path, capsys) -> None:
    rows = tmp_path / "qa.jsonl"
    rows.write_text(
        '{"question": "q1?", "answer": "a"}\n{"question": "q2?", "answer": "b", "candidates": ["x"]}\n'
    )
    args = ["train", "--data", str(rows), "--output", str(tmp_path / "out"), "--reranker", NO_MODEL]
    assert main(args) == 2
    err = _one_error(
        capsys,
        r"nothing to train: none of the 2 loaded rows can teach the gumbel loss "
        r"\(1 no candidates, 1 at most k=5 candidates\).*",
    )
    assert "1 no candidates" in err and "1 at most k=5 candidates" in err and "gumbel-rag mine" in err


def test_read_only_output_is_found_before_any_model(tmp_path: Path, log: Path, capsys) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    target = read_only / "model"
    if os.access(read_only, os.W_OK):  # root writes anywhere; /sys refuses even root
        target = Path("/sys/gumbel-rag-test/model")
    args = ["train", "--data", str(log), "--output", str(target), "--reranker", NO_MODEL]
    assert main(args) == 2
    _one_error(capsys, rf"--output {re.escape(str(target))}: cannot write in \S+ \(Permission denied\)")
    mined = target.parent / "mined.jsonl"
    assert main(["mine", "--data", str(log), "--corpus", str(log), "--output", str(mined)]) == 2
    _one_error(capsys, r"--output \S+: cannot write in \S+ \(Permission denied\)")
    read_only.chmod(0o755)


def test_bad_option_values_are_one_line(capsys) -> None:
    for argv, pattern in [
        (["rerank", "--query", "q", "--documents", "d.jsonl", "--top-k", "0"],
         r"argument --top-k: must be >= 1"),
        (["rerank", "--query", "q", "--documents", "d.jsonl", "--score-threshold", "nan"], r"argument "
         r"--score-threshold: must be a finite number"),
        (["eval", "--data", "d.jsonl", "--k", "2,x"], r"argument --k: expected comma-separated integers"),
        (["eval", "--data", "d.jsonl", "--format", "squad"], r"argument --format: invalid choice: 'squad'"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        _one_error(capsys, pattern + r".* \(see 'gumbel-rag \w+ --help'\)")


def test_no_labelled_rows_fails_in_both_modes_before_loading(tmp_path: Path, capsys) -> None:
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text('{"question": "q?", "answer": "a", "candidates": ["x", "y"]}\n')
    for extra in ([], ["--json"]):
        assert main(["eval", "--data", str(unlabelled), "--reranker", NO_MODEL, *extra]) == 2
        _one_error(
            capsys, r"\S+unlabelled\.jsonl: no labelled rows to evaluate: none of the 1 loaded rows .*"
        )


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch, capsys) -> None:
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        main(["--debug", "eval", "--data", missing])
    with pytest.raises(FileNotFoundError):
        main(["eval", "--data", missing, "--debug"])
    monkeypatch.setenv("GUMBEL_RAG_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["eval", "--data", missing])
    monkeypatch.setenv("GUMBEL_RAG_DEBUG", "0")
    assert main(["eval", "--data", missing]) == 2


def test_console_errors_have_no_traceback(tmp_path: Path) -> None:
    """The real process: stderr is the one line, whatever went wrong, and the status is 2."""
    rows = tmp_path / "bad.jsonl"
    rows.write_text('{"question": "q", "answer": 3}\n')
    env = {**os.environ, "GUMBEL_RAG_DEBUG": ""}
    for argv in (
        ["eval", "--data", str(tmp_path / "nope.jsonl")],
        ["eval", "--data", str(rows)],
        ["rerank", "--query", "q", "--documents", str(tmp_path)],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "gumbel_rag.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert "(--skip-invalid skips such rows)" in done.stderr or "directory" in done.stderr


def test_rerank_reads_every_corpus_container_and_stdin(tiny_bi_encoder_dir, tmp_path: Path, capsys) -> None:
    import pandas as pd

    rows = [
        {"text": "Quenby is a town.", "score": "mine", "n": 1},
        {"text": "Bananas.", "score": "also", "n": 2},
    ]
    files = {
        "d.jsonl": "\ufeff" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
        "d.json": json.dumps(rows),
        "d.txt": "Quenby is a town.\nBananas.\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    model = ["--model", str(tiny_bi_encoder_dir)]
    for name in ["d.jsonl", "d.json", "d.csv", "d.parquet", "d.txt"]:
        assert main(["rerank", "--query", "Quenby", "--documents", str(tmp_path / name), *model]) == 0, name
        out = json.loads(capsys.readouterr().out)
        by_index = {r["index"]: r["document"] for r in out}
        if name == "d.txt":
            assert by_index == {0: "Quenby is a town.", 1: "Bananas."}
        elif name == "d.csv":  # CSV cells are text
            assert by_index == {i: {k: str(v) for k, v in r.items()} for i, r in enumerate(rows)}
        else:
            assert by_index == dict(enumerate(rows)), name
    # U+2028 inside a JSON string is text, not a line break (the QA loader's reading).
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"text": "one\u2028two"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["rerank", "--query", "q", "--documents", str(odd), *model]) == 0
    assert json.loads(capsys.readouterr().out)[0]["document"] == {"text": "one\u2028two"}
    piped = '{"text": "from a pipe", "id": 1}\n"and a string"\n'
    done = subprocess.run(
        [sys.executable, "-m", "gumbel_rag.cli", "rerank", "--query", "q", "--documents", "-", *model],
        input=piped, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert sorted(map(str, (r["document"] for r in json.loads(done.stdout)))) == [
        "and a string", "{'text': 'from a pipe', 'id': 1}"
    ]  # fmt: skip


def test_documents_from_standard_input_as_plain_text() -> None:
    from gumbel_rag.data.formats.documents import load_documents

    docs = load_documents("-", stdin=io.BytesIO(b"\xef\xbb\xbfplain line one\n\nplain line two\n"))
    assert [d.raw for d in docs] == ["plain line one", "plain line two"]
    docs = load_documents("-", stdin=io.BytesIO(b'[{"text": "a", "title": "T"}, "b"]'))
    assert [d.candidate.content for d in docs] == ["T: a", "b"]


# ----------------------------------------------------------------------------- --skip-invalid reports


def _log_with_bad_rows(path: Path, n_bad: int) -> Path:
    good = generate_multihop(3, seed=2, n_candidates=4)
    write_qalog(good, path)
    bad = [json.dumps({"question": f"bad {i}", "answer": i}) for i in range(n_bad)]
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in [*bad, "{broken"]))
    return path


def test_eval_skip_invalid_reports_and_lists_every_skipped_row(
    tiny_bi_encoder_dir, tmp_path: Path, monkeypatch, capsys
) -> None:
    data = _log_with_bad_rows(tmp_path / "dev.jsonl", 7)
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--data", str(data), "--reranker", str(tiny_bi_encoder_dir), "--skip-invalid"]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["n"] == 3 and report["loaded"] == 3 and report["skipped"] == 8
    assert report["skipped_by_reason"] == {"bad answer": 7, "malformed JSON": 1}
    listed = (tmp_path / "skipped_rows.txt").read_text().splitlines()
    assert report["skipped_rows_file"] == "skipped_rows.txt"
    assert [line.split(": ")[0] for line in listed] == [f"{data}:{n}" for n in range(4, 12)]
    assert "field 'answer'" in listed[0] and "malformed JSON" in listed[-1]
    # stderr shows the first few with file:line, and says where the rest are.
    err = captured.err.splitlines()
    start = err.index("skipped 8 rows:")  # model loading may print progress bars around it
    assert err[start + 1 : start + 6] == [f"  {line}" for line in listed[:5]]
    assert err[start + 6] == "  the full list (3 more): skipped_rows.txt"
    listing = tmp_path / "elsewhere" / "skips.txt"
    assert main([*args, "--skipped-rows", str(listing)]) == 0
    out = capsys.readouterr().out
    assert "loaded 3 examples, 8 skipped (7 bad answer, 1 malformed JSON)" in out
    assert "gold: gold labels" in out and listing.read_text().splitlines() == listed


def test_train_and_mine_write_their_skipped_rows_next_to_the_output(
    tiny_bi_encoder_dir, tmp_path: Path
) -> None:
    data = _log_with_bad_rows(tmp_path / "train.jsonl", 2)
    out = tmp_path / "model"
    args = ["train", "--data", str(data), "--output", str(out), "--method", "supervised",
            "--reranker", str(tiny_bi_encoder_dir), "--max-steps", "1", "--no-progress", "--skip-invalid",
            "--mixed-precision", "no"]  # fmt: skip
    assert main(args) == 0
    assert len((out / "skipped_rows.txt").read_text().splitlines()) == 3
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Zorblax river flows through Quenby.\nBananas are yellow.\n")
    mined = tmp_path / "mined.jsonl"
    mine = ["mine", "--data", str(data), "--corpus", str(corpus), "--output", str(mined), "--skip-invalid"]
    assert main(mine) == 0
    assert len((tmp_path / "mined.jsonl.skipped_rows.txt").read_text().splitlines()) == 3
