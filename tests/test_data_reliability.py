"""Data that must never vanish: CSV rows swallowed by a quote, detection that changes a file's meaning,
lone surrogates, half-written outputs, broken gzip files."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from gumbel_rag.data import DataError, load_examples

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
