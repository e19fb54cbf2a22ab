"""QALogWriter: rows the loader reads as written, concurrency (threads, tasks, processes), rotation,
sampling, redaction, failed runs, feedback joined onto its row, and train --min-rating."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import multiprocessing
import pickle
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from gumbel_rag.data import (
    Candidate,
    DataError,
    PendingRuns,
    QALogWriter,
    filter_rated,
    filter_trainable,
    generate_multihop,
    load_examples,
    load_many,
    write_qalog,
)
from gumbel_rag.data.qalog_writer import match_picks, sampled

ROOT = Path(__file__).resolve().parents[1]

CANDIDATES = [
    Candidate(
        "Paris is the capital of France.", id="paris", title="Paris", metadata={"retrieval_score": 0.9}
    ),
    Candidate("Bananas are yellow.", id="banana", metadata={"retrieval_score": 0.4, "tags": ["fruit"]}),
    Candidate("The Nile flows north.", id="nile", metadata={"retrieval_score": 0.2}),
    "A bare text candidate.",
]


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines() if line.strip()]


def all_lines(writer: QALogWriter) -> list[dict]:
    return [row for p in writer.files() for row in lines_of(p)]


# ----------------------------------------------------------------------------- rows


def test_a_row_reads_back_as_written_and_trains_without_conversion(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl", metadata={"app": "support-bot"})
    picks = [(Candidate("The Nile flows north.", id="nile"), 2.5), (CANDIDATES[0], 7.0)]
    expected = writer.build_row(
        "Which river flows north?", "the Nile", CANDIDATES, reranked=picks, reranker="my-model", run_id="r1"
    )
    run_id = writer.write(
        "Which river flows north?", "the Nile", CANDIDATES, reranked=picks, reranker="my-model", run_id="r1"
    )
    assert run_id == "r1"
    examples, summary = load_examples(tmp_path / "log.jsonl")
    assert summary.loaded == 1 and not summary.skipped
    (ex,) = examples
    assert ex.question == expected.question and ex.answers == ["the Nile"] and ex.id == "r1"
    # Candidates in the first stage's order, with their metadata, first-stage and rerank scores.
    assert [c.id for c in ex.candidates] == ["paris", "banana", "nile", None]
    assert ex.candidates[0].title == "Paris" and ex.candidates[1].metadata["tags"] == ["fruit"]
    assert ex.candidates[2].metadata == {"retrieval_score": 0.2, "rerank_score": 2.5}
    assert ex.candidates[0].metadata["rerank_score"] == 7.0
    assert "rerank_score" not in ex.candidates[1].metadata
    assert ex.metadata["picked"] == [2, 0]
    assert ex.metadata["reranker"] == "my-model" and ex.metadata["app"] == "support-bot"
    assert ex.metadata["run_id"] == "r1" and re.match(r"\d{4}-\d\d-\d\dT", ex.metadata["timestamp"])
    assert ex.gold is None
    # What the loader reads equals what the writer built (the timestamps aside).
    expected.metadata["timestamp"] = ex.metadata["timestamp"]
    assert ex == expected
    kept, _ = filter_trainable(examples, k=2)
    assert kept == examples


def test_picks_are_matched_by_id_and_text_and_unknown_picks_are_added(tmp_path: Path) -> None:
    docs = [Candidate("same", id="a"), Candidate("same", id="b"), Candidate("other", id="c")]
    indices, extra = match_picks(docs, [Candidate("same", id="b"), Candidate("same"), Candidate("new")])
    assert indices == [1, 0, 3] and extra == [Candidate("new")]
    writer = QALogWriter(tmp_path / "log.jsonl")
    writer.write("q?", "a", docs, reranked=[(Candidate("new"), 1.0), (Candidate("other", id="c"), None)])
    (ex,), _ = load_examples(writer.path)
    assert [c.text for c in ex.candidates] == ["same", "same", "other", "new"]
    assert ex.metadata["picked"] == [3, 2] and "rerank_score" not in ex.candidates[2].metadata


def test_metadata_is_made_json_safe(tmp_path: Path) -> None:
    import datetime as dt

    import numpy as np

    writer = QALogWriter(tmp_path / "log.jsonl")
    meta = {"when": dt.date(2026, 1, 2), "score": np.float32(0.5), "path": tmp_path}
    writer.write("q?", "a", [Candidate("t", metadata=meta)], metadata={"n": np.int64(3)})
    (ex,), _ = load_examples(writer.path)
    assert ex.candidates[0].metadata == {"when": "2026-01-02", "score": 0.5, "path": str(tmp_path)}
    assert ex.metadata["n"] == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"question": "", "answer": "a"}, ValueError, "question is empty"),
        ({"question": "q?", "answer": " "}, ValueError, "answer is empty"),
        ({"question": "q?", "answer": []}, ValueError, "answer must be a non-empty string"),
        ({"question": 3, "answer": "a"}, TypeError, "question must be a string"),
        ({"question": "q?", "answer": "a", "candidates": [3]}, TypeError, r"candidates\[0\] must be"),
        ({"question": "q\ud800", "answer": "a"}, DataError, "lone surrogate"),
        (
            {"question": "q?", "answer": "a", "reranked": [("x", "high")]},
            TypeError,
            r"reranked\[0\] score must be a number",
        ),
    ],
)
def test_bad_rows_are_refused_before_anything_is_written(
    tmp_path: Path, kwargs: dict, error: type, match: str
) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl")
    with pytest.raises(error, match=match):
        writer.write(**kwargs)
    assert not writer.path.exists()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end in \.jsonl"):
        QALogWriter(tmp_path / "log.csv")
    with pytest.raises(ValueError, match="max_bytes must be a positive integer"):
        QALogWriter(tmp_path / "log.jsonl", max_bytes=0)
    with pytest.raises(ValueError, match=r"sample_rate must be a number in \[0, 1\]"):
        QALogWriter(tmp_path / "log.jsonl", sample_rate=1.5)
    with pytest.raises(TypeError, match="redact must be a callable"):
        QALogWriter(tmp_path / "log.jsonl", redact="email")  # type: ignore[arg-type]
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(IsADirectoryError):
        QALogWriter(tmp_path / "dir.jsonl")


# ----------------------------------------------------------------------------- failed runs


def test_a_failed_run_writes_nothing_and_a_successful_one_writes_once(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl")
    with pytest.raises(RuntimeError, match="the LLM timed out"), writer.run("q1?") as run:
        run.candidates = list(CANDIDATES)
        raise RuntimeError("the LLM timed out")
    assert not writer.path.exists()
    with writer.run("q2?", run_id="ok") as run:
        run.candidates = list(CANDIDATES)
        run.answer = "yes"
    assert run.commit() is False  # already written
    rows = lines_of(writer.path)
    assert [r["id"] for r in rows] == ["ok"]
    with pytest.raises(ValueError, match="without a question and an answer"), writer.run("q3?"):
        pass


def test_pending_runs_write_only_runs_that_succeed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl")
    runs = PendingRuns(writer, max_pending=2)
    for root in ("good", "bad"):
        runs.link(root, None)
        runs.link(f"{root}-child", root)
        runs.link(f"{root}-grandchild", f"{root}-child")
        run = runs.get(f"{root}-grandchild")
        assert run is runs.get(root) and run.run_id == root
        run.question, run.answer, run.candidates = f"{root}?", "a", ["x", "y"]
    assert runs.finish("bad", ok=False) is False
    assert runs.finish("good", ok=True) is True
    assert len(runs) == 0 and runs.root_of("good-child") is None
    assert [r["id"] for r in lines_of(writer.path)] == ["good"]
    # A run with no answer (a retriever called on its own) writes nothing.
    runs.get("no-answer").question = "q?"
    assert runs.finish("no-answer", ok=True) is False
    # Beyond max_pending the oldest run is dropped, with a warning.
    with caplog.at_level(logging.WARNING):
        for root in ("r1", "r2", "r3"):
            runs.link(root, None)
    assert len(runs) == 2 and runs.root_of("r1") is None and "dropped the oldest (r1)" in caplog.text


# ----------------------------------------------------------------------------- redaction, sampling


EMAIL = re.compile(r"[\w.]+@[\w.]+")


def redact_emails(text: str) -> str:
    return EMAIL.sub("<email>", text)


def test_redact_reaches_every_text_and_a_failing_redact_writes_nothing(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl", redact=redact_emails, metadata={"owner": "ops@corp.example"})
    docs = [
        Candidate(
            "Mail ann@corp.example for access.", id="d1", title="ann@corp.example", metadata={"by": "bo@x.io"}
        )
    ]
    run_id = writer.write(
        "Who is ann@corp.example?", "It is ann@corp.example", docs,
        reranked=[(docs[0], 1.0)], metadata={"user": "cy@x.io", "nested": [{"who": "dee@x.io"}]},
    )  # fmt: skip
    writer.feedback(run_id, answer="Ann, ann@corp.example", metadata={"by": "eve@x.io"})
    text = writer.path.read_text(encoding="utf8")
    assert not EMAIL.search(text), text
    assert text.count("<email>") == 10
    (ex,), _ = load_examples(writer.path)
    # The reranker's pick was redacted the same way, so it still matches its candidate.
    assert ex.metadata["picked"] == [0] and len(ex.candidates) == 1

    def broken(text: str) -> str:
        raise RuntimeError("redaction service down")

    size = writer.path.stat().st_size
    with pytest.raises(RuntimeError, match="redaction service down"):
        QALogWriter(writer.path, redact=broken).write("secret?", "secret")
    with pytest.raises(TypeError, match="redact must return a string, got NoneType for the question"):
        QALogWriter(writer.path, redact=lambda t: None).write("secret?", "secret")  # type: ignore[arg-type,return-value]
    assert writer.path.stat().st_size == size


def test_sampling_is_decided_by_run_id_and_skips_its_feedback(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl", sample_rate=0.3)
    ids = [f"run-{i}" for i in range(1000)]
    written = [writer.write("q?", "a", ["x"], run_id=i) for i in ids]
    kept = [i for i, w in zip(ids, written, strict=True) if w is not None]
    assert 240 < len(kept) < 360
    assert kept == [i for i in ids if sampled(i, 0.3)]
    # Another writer (another process) makes the same choice; feedback follows it.
    other = QALogWriter(writer.path, sample_rate=0.3)
    dropped = next(i for i in ids if i not in kept)
    assert other.feedback(dropped, rating=5) is False
    assert other.feedback(kept[0], rating=5) is True
    rows = lines_of(writer.path)
    assert len(rows) == len(kept) + 1 and rows[-1]["feedback"]["run_id"] == kept[0]
    assert QALogWriter(tmp_path / "none.jsonl", sample_rate=0).write("q?", "a") is None
    assert not (tmp_path / "none.jsonl").exists()


# ----------------------------------------------------------------------------- concurrency


def test_threads_share_one_writer_without_losing_or_tearing_lines(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl", max_bytes=20_000)
    long_text = "x" * 3000  # lines well past a pipe's atomic size

    def work(t: int) -> None:
        for i in range(40):
            writer.write(f"q {t}-{i}?", "a", [long_text, f"doc {t}-{i}"], run_id=f"{t}-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rows = all_lines(writer)
    assert sorted(r["id"] for r in rows) == sorted(f"{t}-{i}" for t in range(8) for i in range(40))
    assert len(writer.files()) > 1
    _, summary = load_many(writer.files())
    assert summary.loaded == 320 and not summary.skipped


def test_asyncio_tasks_share_one_writer(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl", fsync=True)

    async def one(i: int) -> None:
        if i % 2:
            await writer.awrite(f"q{i}?", "a", ["x", "y"], run_id=f"r{i}")
        else:
            writer.write(f"q{i}?", "a", ["x", "y"], run_id=f"r{i}")
        await writer.afeedback(f"r{i}", rating=i)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(60)))

    asyncio.run(main())
    examples, summary = load_examples(writer.path)
    assert summary.loaded == 60 and not summary.skipped
    assert sorted((ex.id, ex.metadata["feedback"]["rating"]) for ex in examples) == sorted(
        (f"r{i}", float(i)) for i in range(60)
    )


WORKER = textwrap.dedent(
    """
    import sys
    from gumbel_rag.data import QALogWriter
    path, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # Small files: rotations race with the other processes' appends (without the lock, rows are lost).
    writer = QALogWriter(path, max_bytes=4_000)
    for i in range(n):
        writer.write(f"question {worker}-{i}?", "answer", ["y" * 1500, f"doc {i}"], run_id=f"{worker}-{i}")
        if i % 10 == 0:
            writer.feedback(f"{worker}-{i}", rating=1)
    """
)


def test_processes_appending_to_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "qa.jsonl"
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(path), f"p{w}", "100"], cwd=ROOT)
        for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    writer = QALogWriter(path)
    files = writer.files()
    assert len(files) > 2, "rotation happened while several processes appended"
    for f in files:  # every line of every file is whole
        lines_of(f)
    rows = [r for r in all_lines(writer) if "question" in r]
    assert sorted(r["id"] for r in rows) == sorted(f"p{w}-{i}" for w in range(4) for i in range(100))
    # The directory loads as one log, feedback joined across the rotated files.
    examples, summary = load_many(path.parent)
    assert summary.loaded == 400 and not summary.skipped
    rated = [ex.id for ex in examples if "feedback" in ex.metadata]
    assert sorted(rated) == sorted(f"p{w}-{i}" for w in range(4) for i in range(0, 100, 10))


def _forked_child(writer: QALogWriter, worker: int) -> None:
    for i in range(50):
        writer.write(f"q {worker}-{i}?", "a", ["z" * 2000], run_id=f"f{worker}-{i}")


def test_a_writer_shared_across_fork_gets_descriptors_of_its_own(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl", max_bytes=40_000)
    writer.write("opened before the fork?", "a", run_id="parent")
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_forked_child, args=(writer, w)) for w in range(3)]
    for c in children:
        c.start()
    _forked_child(writer, 9)
    for c in children:
        c.join(60)
    assert [c.exitcode for c in children] == [0, 0, 0]
    ids = sorted(r["id"] for r in all_lines(writer))
    assert ids == sorted(["parent", *(f"f{w}-{i}" for w in (0, 1, 2, 9) for i in range(50))])


def test_a_torn_last_line_costs_only_itself(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl")
    writer.write("first?", "a", ["x"], run_id="first")
    with writer.path.open("ab") as fh:  # a process killed half-way through its line
        fh.write(b'{"id": "torn", "question": "half')
    writer.write("after?", "a", ["x"], run_id="after")
    with pytest.raises(DataError, match=r"log\.jsonl:2: malformed JSON"):
        load_examples(writer.path)
    examples, summary = load_examples(writer.path, skip_invalid=True)
    assert [ex.id for ex in examples] == ["first", "after"] and summary.skipped == {"malformed JSON": 1}


def test_rotation_keeps_every_file_and_a_copy_writes_on_its_own(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl", max_bytes=1000)
    ids = [writer.write(f"q{i}?", "a", ["doc " * 40]) for i in range(12)]
    files = writer.files()
    assert files[-1] == writer.path and len(files) > 3
    assert all(f.stat().st_size <= 1000 for f in files)
    assert [r["id"] for r in all_lines(writer)] == ids  # oldest first
    clone = pickle.loads(pickle.dumps(writer))
    clone.write("from the copy?", "a", run_id="copy")
    copy.deepcopy(writer).write("from the deep copy?", "a", run_id="deep")
    assert [r["id"] for r in all_lines(writer)][-2:] == ["copy", "deep"]
    writer.close()
    writer.write("after close?", "a", run_id="reopened")
    assert lines_of(writer.path)[-1]["id"] == "reopened"


# ----------------------------------------------------------------------------- feedback


def _row(run_id: str, answer: str = "logged answer") -> str:
    row = {"id": run_id, "question": f"{run_id}?", "answer": answer, "candidates": ["a", "b", "c"]}
    row["metadata"] = {"run_id": run_id}
    return json.dumps(row)


def _fb(run_id: str, when: str, **fields: object) -> str:
    return json.dumps({"feedback": {"run_id": run_id, "timestamp": when, **fields}})


def test_feedback_joins_onto_its_row_latest_wins_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    lines = [
        _row("r1"),
        _row("r2"),
        # Read out of time order: the latest timestamp wins, not the last line.
        _fb("r1", "2026-01-03T00:00:00+00:00", answer="newest answer"),
        _fb("r1", "2026-01-01T00:00:00+00:00", answer="oldest answer", rating=1),
        _fb("r1", "2026-01-02T00:00:00+00:00", rating=4),
        _fb("r2", "2026-01-01T00:00:00+00:00", answer="logged answer", rating=2.5),
        _fb("gone", "2026-01-01T00:00:00+00:00", rating=5),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    (r1, r2), summary = load_examples(path)
    assert r1.answers == ["newest answer"] and r1.metadata["logged_answers"] == ["logged answer"]
    assert r1.metadata["feedback"] == {
        "answer": "newest answer",
        "rating": 4.0,
        "timestamp": "2026-01-03T00:00:00+00:00",
    }
    # An accepted answer (the same as logged) keeps the row's answers.
    assert r2.answers == ["logged answer"] and "logged_answers" not in r2.metadata
    assert r2.metadata["feedback"]["rating"] == 2.5
    assert summary.loaded == 2 and summary.skipped == {"feedback without its row": 1}
    assert "feedback for run 'gone' matches no row" in summary.skipped_rows[0][2]


def test_feedback_in_a_later_file_joins_when_the_files_load_together(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl", max_bytes=400)
    run_id = writer.write("Where is Paris?", "in Germany", ["Paris is in France.", "x", "y"])
    for i in range(3):
        writer.write(f"filler {i}?", "a", ["doc " * 20])
    writer.feedback(run_id, answer="in France", rating=5)
    assert len(writer.files()) > 1
    (first, *_), alone = load_examples(writer.files()[0])
    assert first.answers == ["in Germany"] and not alone.skipped
    examples, summary = load_many(writer.files())
    assert examples[0].answers == ["in France"] and not summary.skipped


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"rating": 3}, "feedback.run_id", "missing"),
        ({"run_id": "r"}, "feedback", "neither an answer nor a rating"),
        ({"run_id": "r", "rating": "good"}, "feedback.rating", "expected a finite number"),
        ({"run_id": "r", "answer": ""}, "feedback.answer", "is empty"),
        ({"run_id": "r", "rating": 1, "timestamp": 5}, "feedback.timestamp", "ISO 8601"),
    ],
)
def test_bad_feedback_records_are_located(tmp_path: Path, record: dict, field: str, message: str) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(_row("r") + "\n" + json.dumps({"feedback": record}) + "\n", encoding="utf8")
    with pytest.raises(DataError, match=rf"log\.jsonl:2: field '{re.escape(field)}': .*{message}"):
        load_examples(path)
    examples, summary = load_examples(path, skip_invalid=True)
    assert len(examples) == 1 and summary.n_skipped == 1 and "feedback" in next(iter(summary.skipped))


def test_feedback_arguments_are_checked(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl")
    with pytest.raises(ValueError, match="needs an answer, a rating or both"):
        writer.feedback("r")
    with pytest.raises(ValueError, match="rating must be a finite number"):
        writer.feedback("r", rating=float("nan"))
    with pytest.raises(TypeError, match="feedback answer must be a string"):
        writer.feedback("r", answer=["a"])  # type: ignore[arg-type]
    assert not writer.path.exists()


def test_filter_rated_keeps_rows_rated_at_least(tmp_path: Path) -> None:
    writer = QALogWriter(tmp_path / "log.jsonl")
    ids = [writer.write(f"q{i}?", "a", ["x", "y", "z"]) for i in range(4)]
    writer.feedback(ids[0], rating=5)
    writer.feedback(ids[1], rating=2)
    writer.feedback(ids[2], answer="corrected")
    examples, _ = load_examples(writer.path)
    kept, summary = filter_rated(examples, 3)
    assert [ex.id for ex in kept] == [ids[0]]
    assert summary.skipped == {"not rated": 2, "rated below 3": 1}
    with pytest.raises(ValueError, match="min_rating must be a finite number"):
        filter_rated(examples, float("inf"))


# ----------------------------------------------------------------------------- the command line


def test_train_uses_corrected_answers_and_min_rating(
    tmp_path: Path, tiny_bi_encoder_dir: Path, tiny_reader_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gumbel_rag.cli import main

    examples = generate_multihop(10, seed=3, n_candidates=4)
    writer = QALogWriter(tmp_path / "capture" / "qa.jsonl", max_bytes=3000)
    ids = [writer.write(ex.question, "a wrong answer", ex.candidates) for ex in examples]
    for run_id, ex in zip(ids[:6], examples[:6], strict=True):
        writer.feedback(run_id, answer=ex.answer, rating=5)
    writer.feedback(ids[6], rating=1)
    write_qalog(examples[6:], tmp_path / "dev.jsonl")
    common = [
        "train", "--data", str(writer.path.parent), "--reranker", str(tiny_bi_encoder_dir),
        "--reader", str(tiny_reader_dir), "--k", "2", "--batch-size", "2", "--grad-accum", "1",
        "--max-document-tokens", "16", "--no-progress", "--mixed-precision", "no",
    ]  # fmt: skip
    out_dir = tmp_path / "model"
    assert main([*common, "--min-rating", "4", "--output", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "loaded 10 examples, 0 skipped" in out
    assert "rated at least 4: 6 examples, 4 skipped (3 not rated, 1 rated below 4)" in out
    assert "3 steps (0 skipped)" in out  # 6 rows, batch 2
    assert main(["eval", "--data", str(tmp_path / "dev.jsonl"), "--reranker", str(out_dir)]) == 0
    assert "recall@2" in capsys.readouterr().out
    # The loader gives train the corrected answers.
    loaded, _ = load_many(writer.path.parent)
    assert [ex.answer for ex in loaded[:6]] == [ex.answer for ex in examples[:6]]
    assert main([*common, "--min-rating", "9", "--output", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "error: nothing to train: no row is rated at least 9" in err
