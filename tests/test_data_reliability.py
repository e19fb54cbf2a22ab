"""Data that must never vanish: CSV rows swallowed by a quote, detection that changes a file's meaning,
lone surrogates, half-written outputs, broken gzip files."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

import pytest

from gumbel_rag.data import Candidate, DataError, QAExample, load_examples, write_qalog

HEADER = "id,question,answer"


def _csv_rows(n: int) -> list[str]:
    return [f"q{i},Question number {i}?,Answer {i}" for i in range(1, n + 1)]


def _write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- CSV


def test_csv_unclosed_quote_does_not_swallow_the_rest(tmp_path: Path) -> None:
    rows = _csv_rows(100)
    rows[1] = rows[1].replace("Question", '"Question', 1)  # row 2, on line 3, opens a quote for good
    path = _write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(DataError, match=r"data\.csv:3: a quoted cell opened on this line is never closed"):
        load_examples(path)
    examples, summary = load_examples(path, skip_invalid=True)
    # Every other row is read: the bad one is listed, none vanishes with it.
    assert [e.id for e in examples] == [f"q{i}" for i in range(1, 101) if i != 2]
    assert summary.skipped == {"malformed CSV": 1}
    assert summary.skipped_rows[0][:2] == (str(path), 3)


@pytest.mark.parametrize("closing_row", [3, 48])
def test_csv_stray_quote_pair_is_refused_not_merged(tmp_path: Path, closing_row: int) -> None:
    rows = _csv_rows(100)
    rows[1] = rows[1].replace("Question", '"Question', 1)
    # A second stray quote at the end of a later cell closes the first: csv alone would read one row.
    rows[closing_row - 1] = rows[closing_row - 1].replace("?,", '?",', 1)
    path = _write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(DataError, match=rf"data\.csv:3: a quoted cell opened on this line runs to line "
                       rf"{closing_row + 1}, and each of those lines reads as a row"):  # fmt: skip
        load_examples(path)
    examples, summary = load_examples(path, skip_invalid=True)
    assert len(examples) == 99 and summary.n_skipped == 1
    assert [e.id for e in examples] == [f"q{i}" for i in range(1, 101) if i != 2]


def test_csv_quote_followed_by_text_names_the_row(tmp_path: Path) -> None:
    rows = _csv_rows(5)
    rows[1] = 'q2,"Question" two?,Answer 2'
    with pytest.raises(DataError, match=r"data\.csv:3: malformed CSV: ',' expected after '\"'"):
        load_examples(_write_csv(tmp_path / "data.csv", rows))


def test_csv_multi_line_record_with_wrong_count_rereads_the_lines_it_took(tmp_path: Path) -> None:
    rows = _csv_rows(6)
    rows[1] = 'q2,"Question two?'  # open quote, closed on the next row's line with too many cells
    rows[2] = 'q3,Question three?",Answer 3,extra'
    path = _write_csv(tmp_path / "data.csv", rows)
    match = r"data\.csv:3: expected 3 columns, got 4 \(the record runs to line 4"
    with pytest.raises(DataError, match=match):
        load_examples(path)
    examples, summary = load_examples(path, skip_invalid=True)
    assert [e.id for e in examples] == ["q1", "q4", "q5", "q6"]
    assert [line for _, line, _ in summary.skipped_rows] == [3, 4]


def _pandas_csv(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def test_csv_real_multi_line_cells_still_load(tmp_path: Path) -> None:
    """Multi-paragraph documents and questions, as pandas / Excel write them, are not mistaken for rows."""
    text = "Quenby is a town, {} miles away.\nIt has, as they say, potters.\nThe river, the Zorblax, flows."
    corpus = [{"id": f"d{i}", "title": "Quenby", "text": text.format(i)} for i in range(5)]
    corpus += [{"id": "d9", "title": "Brannock", "text": "One paragraph, with commas, only."}]
    path = tmp_path / "corpus.csv"
    path.write_text(_pandas_csv(corpus), encoding="utf-8")
    from gumbel_rag.data.formats.qalog import read_rows

    rows, _ = read_rows(path)
    assert [row["text"] for _, row in rows] == [c["text"] for c in corpus]  # type: ignore[index]
    log = [
        {"question": "Where is Quessly Works,\nthe potters' company?", "answer": "Brannock"},
        {"question": "Who wrote it?", "answer": "Orvin Quell"},
    ]
    (tmp_path / "log.csv").write_text(_pandas_csv(log), encoding="utf-8")
    examples, _ = load_examples(tmp_path / "log.csv")
    assert [e.question for e in examples] == [row["question"] for row in log]


# ----------------------------------------------------------------------------- format detection

_LOG_ROW = {
    "question": "Where is Quessly Works?",
    "answer": "Brannock",
    "candidates": [{"text": "Quessly Works is in Brannock.", "id": "d1"}, {"text": "Bananas.", "id": "d2"}],
    "gold": ["d1"],
}


def test_extra_context_column_keeps_a_qa_log_a_qa_log(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({**_LOG_ROW, "context": "asked in the support chat"}) + "\n")
    [example], _ = load_examples(path)
    assert [c.id for c in example.candidates] == ["d1", "d2"] and example.gold == [0]
    assert example.metadata == {"context": "asked in the support chat"}


def test_extra_paragraphs_column_keeps_a_parquet_qa_log_a_qa_log(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "log.parquet"
    row = {**_LOG_ROW, "gold": [0], "paragraphs": []}
    pd.DataFrame([row, {**row, "paragraphs": ["an extra note"]}]).to_parquet(path)
    examples, _ = load_examples(path)
    assert [len(e.candidates) for e in examples] == [2, 2] and [e.gold for e in examples] == [[0], [0]]


def test_a_row_that_fits_two_formats_asks_for_format(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    hotpot = {"context": [["Quessly Works", ["Quessly Works is in Brannock."]]], "supporting_facts": []}
    path.write_text(json.dumps({**_LOG_ROW, **hotpot}) + "\n")
    match = (
        r"mixed\.jsonl:1: the rows fit more than one format: a QA log \('candidates'\) and HotpotQA "
        r".*--format qalog or --format hotpotqa"
    )
    for skip in (False, True):  # not a row to skip: every row of the file would go
        with pytest.raises(DataError, match=match):
            load_examples(path, skip_invalid=skip)
    assert [c.id for c in load_examples(path, "qalog")[0][0].candidates] == ["d1", "d2"]
    assert [c.title for c in load_examples(path, "hotpotqa")[0][0].candidates] == ["Quessly Works"]


# ----------------------------------------------------------------------------- gzip


@pytest.mark.parametrize("damage", ["truncated", "plain text", "corrupt"])
def test_broken_gzip_is_a_data_error(tmp_path: Path, damage: str) -> None:
    whole = gzip.compress(b"".join(json.dumps(_LOG_ROW).encode() + b"\n" for _ in range(200)))
    data = {
        "truncated": whole[: len(whole) // 2],
        "plain text": json.dumps(_LOG_ROW).encode() + b"\n",
        "corrupt": whole[:20] + bytes(b ^ 0xFF for b in whole[20:60]) + whole[60:],
    }[damage]
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(data)
    for skip in (False, True):
        with pytest.raises(DataError, match=r"log\.jsonl\.gz: not a readable gzip file"):
            load_examples(path, skip_invalid=skip)


# ----------------------------------------------------------------------------- lone surrogates


_FINE = '{"question": "fine \\ud83d\\ude00", "answer": "a"}'  # an escaped surrogate pair is text
_FINE_HOTPOT = '{"question": "fine", "answer": "a", "context": [], "supporting_facts": []}'


@pytest.mark.parametrize(
    ("first", "row", "field"),
    [
        (_FINE, '{"question": "caf\\ud800", "answer": "a"}', "question"),
        (_FINE, '{"question": "q", "answers": ["a", "\\udfff"]}', "answers[1]"),
        (_FINE, '{"question": "q", "answer": "a", "candidates": ["ok", {"text": "x\\ud83d"}]}',
         "candidates[1].text"),
        (_FINE, '{"question": "q", "answer": "a", "metadata": {"note": ["\\udc00"]}}', "metadata.note[0]"),
        (_FINE_HOTPOT, '{"question": "q", "answer": "a", "context": [["T\\ud800", ["s"]]], '
         '"supporting_facts": []}', "candidates[0].title"),
    ],
)  # fmt: skip
def test_lone_surrogate_is_refused_naming_the_row(tmp_path: Path, first: str, row: str, field: str) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(first + "\n" + row + "\n")
    with pytest.raises(DataError, match=rf"log\.jsonl:2: field '{re.escape(field)}': holds a lone surrogate"):
        load_examples(path)
    examples, summary = load_examples(path, skip_invalid=True)
    assert len(examples) == 1 and summary.skipped == {"lone surrogate": 1}


def test_lone_surrogate_in_a_csv_cell_and_a_corpus(tmp_path: Path) -> None:
    from gumbel_rag.data import load_corpus

    path = tmp_path / "log.csv"
    path.write_text('question,answer,candidates\nq,a,"[""x\\ud800""]"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"log\.csv:2: field 'candidates\[0\]': holds a lone surrogate"):
        load_examples(path)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "fine"}\n{"text": "bad \\ud800"}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: field 'text': holds a lone surrogate"):
        load_corpus(corpus)


def test_whole_file_problems_are_errors_even_when_skipping(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "q", "answer": "a"},\n{"question": \n')
    with pytest.raises(DataError, match=r"broken\.json:\d+: malformed JSON"):
        load_examples(broken, skip_invalid=True)
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_examples(parquet, skip_invalid=True)


# ----------------------------------------------------------------------------- writing


def _pandas_metadata() -> dict:
    import datetime as dt
    from decimal import Decimal

    import numpy as np

    return {
        "when": dt.datetime(2026, 1, 2, 3, 4, 5),
        "price": Decimal("1.5"),
        "n": np.int64(3),
        "day": dt.date(2026, 1, 2),
    }


@pytest.mark.parametrize("name", ["out.jsonl", "out.json", "out.csv", "out.parquet", "out.jsonl.gz"])
def test_write_qalog_makes_metadata_json_safe(tmp_path: Path, name: str) -> None:
    example = QAExample("Q?", ["A"], [Candidate("doc", id="d1", metadata=_pandas_metadata())], gold=[0],
                        metadata=_pandas_metadata())  # fmt: skip
    write_qalog([example], tmp_path / name)
    [loaded], _ = load_examples(tmp_path / name)
    expected = {"when": "2026-01-02T03:04:05", "price": 1.5, "n": 3, "day": "2026-01-02"}
    assert loaded.metadata == expected and loaded.candidates[0].metadata == expected


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.parquet", "out.jsonl.gz"])
def test_failed_write_leaves_the_previous_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    good = [QAExample(f"Q{i}?", ["A"]) for i in range(3)]
    write_qalog(good, path)
    before = path.read_bytes()
    bad = [*good, QAExample("Q\ud800?", ["A"], source="in.jsonl:4")]
    with pytest.raises(DataError, match=r"cannot write example 4 \(in\.jsonl:4\): field 'question'"):
        write_qalog(bad, path)

    class Unwritable:
        def __str__(self) -> str:
            raise RuntimeError("a value that cannot be written")

    with pytest.raises(RuntimeError):
        write_qalog([*good, QAExample("Q?", ["A"], metadata={"x": Unwritable()})], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind


def test_mine_output_survives_a_failed_run_and_takes_datetime_corpus_metadata(tmp_path: Path) -> None:
    import pandas as pd

    from gumbel_rag.cli import main

    questions = tmp_path / "qa.jsonl"
    questions.write_text('{"question": "Which river flows through Quenby?", "answer": "Zorblax"}\n')
    corpus = tmp_path / "corpus.parquet"
    frame = pd.DataFrame(
        {"text": ["The Zorblax river flows through Quenby.", "Bananas are yellow."],
         "added": pd.to_datetime(["2026-01-01", "2026-02-01"]), "price": [1.5, float("nan")]}
    )  # fmt: skip
    frame.to_parquet(corpus)
    out = tmp_path / "mined.jsonl"
    args = ["mine", "--data", str(questions), "--corpus", str(corpus), "--output", str(out), "--top-n", "2"]
    assert main(args) == 0
    [example], _ = load_examples(out)
    assert example.candidates[0].metadata["added"] == "2026-01-01T00:00:00"
    before = out.read_bytes()
    questions.write_text('{"question": "Which river?", "answer": "Zorblax"}\n{"broken\n')
    assert main(args) == 2  # a bad row: an error, and the previous output is untouched
    assert out.read_bytes() == before
