"""QA-log loading: parsing, located errors, skip summaries, round-trips and filtering."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gumbel_rag.data import (
    Candidate,
    DataError,
    LoadSummary,
    QAExample,
    detect_format,
    filter_trainable,
    load_examples,
    load_many,
    write_qalog,
)


def _jsonl(path: Path, *rows: object) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


# ----------------------------------------------------------------------------- parsing


def test_minimal_rows_and_answer_forms(tmp_path: Path) -> None:
    p = _jsonl(
        tmp_path / "log.jsonl",
        {"question": "Q1?", "answer": "A1"},
        {"question": "Q2?", "answer": ["A2", "alias"]},
        {"question": "Q3?", "answers": ["A3"], "id": 7},
        {"question": "Q4?", "answer": "A4", "answers": ["A4", "B4"]},
    )
    examples, summary = load_examples(p)
    assert [e.answers for e in examples] == [["A1"], ["A2", "alias"], ["A3"], ["A4", "B4"]]
    assert [e.candidates for e in examples] == [[], [], [], []]
    assert all(e.gold is None for e in examples)
    assert examples[2].id == "7"  # integer ids are kept, as strings
    assert examples[1].source == f"{p}:2"
    assert summary.loaded == 4 and summary.skipped == {}


def test_candidates_gold_by_index_id_and_flag(tmp_path: Path) -> None:
    row = {
        "question": "Where?",
        "answer": "Here",
        "candidates": [
            "plain text",
            {"text": "t1", "id": "d1", "title": "T1", "metadata": {"url": "u"}, "score": 0.5},
            {"text": "t2", "id": 99, "gold": True},
            {"text": "t3", "id": "d3", "gold": False},
        ],
        "gold": [0, "d1"],
        "extra_column": "kept",
    }
    [ex], _ = load_examples(_jsonl(tmp_path / "log.jsonl", row))
    assert ex.gold == [0, 1, 2]
    assert ex.candidates[0] == Candidate(text="plain text")
    # Unknown candidate keys (a retriever's score) join the metadata instead of being dropped.
    assert ex.candidates[1] == Candidate(text="t1", id="d1", title="T1", metadata={"url": "u", "score": 0.5})
    assert ex.candidates[2].id == "99"
    assert ex.metadata == {"extra_column": "kept"}


def test_gold_flags_alone_make_gold_known(tmp_path: Path) -> None:
    rows = [
        {"question": "Q?", "answer": "A", "candidates": [{"text": "x", "gold": False}, {"text": "y"}]},
        {"question": "Q?", "answer": "A", "candidates": ["x", "y"], "gold": []},
        {"question": "Q?", "answer": "A", "candidates": ["x", "y"], "gold": 1},
    ]
    examples, _ = load_examples(_jsonl(tmp_path / "log.jsonl", *rows))
    assert [e.gold for e in examples] == [[], [], [1]]


def test_duplicate_candidates_are_kept_and_share_gold(tmp_path: Path) -> None:
    row = {
        "question": "Q?",
        "answer": "A",
        "candidates": ["same", "other", "same", {"text": "same", "title": "T"}],
        "gold": [2],
    }
    [ex], _ = load_examples(_jsonl(tmp_path / "log.jsonl", row))
    assert len(ex.candidates) == 4
    # Copies with identical content are the same document; a titled copy reads differently.
    assert ex.gold == [0, 2]


def test_content_uses_title_when_present() -> None:
    assert Candidate(text="body", title="Head").content == "Head: body"
    assert Candidate(text="body").content == "body"


def test_qaexample_guards_against_programming_errors() -> None:
    with pytest.raises(TypeError):
        QAExample(question="q", answers="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        QAExample(question="q", answers=["a"], candidates=[Candidate("x")], gold=[1])


# ----------------------------------------------------------------------------- located errors

_OK = {"question": "Fine?", "answer": "yes"}

# (file name, raw content, line, field, message fragment, skip reason)
_BAD_JSONL = {
    "malformed_json": ('{"question": "q", "answer": "a"', 2, None, "malformed JSON", "malformed JSON"),
    "not_object": ('["question", "answer"]', 2, None, "expected a JSON object, got list", "not an object"),
    "missing_question": ({"answer": "a"}, 2, "question", "missing", "missing question"),
    "question_type": (
        {"question": 3, "answer": "a"},
        2,
        "question",
        "expected a string, got int",
        "bad question",
    ),
    "question_blank": ({"question": "  ", "answer": "a"}, 2, "question", "is empty", "empty question"),
    "missing_answer": ({"question": "q"}, 2, "answer", "missing", "missing answer"),
    "answer_type": (
        {"question": "q", "answer": 42},
        2,
        "answer",
        "expected a string or a list of strings, got int",
        "bad answer",
    ),
    "answers_item_type": (
        {"question": "q", "answers": ["a", None]},
        2,
        "answers",
        "got a list containing null",
        "bad answer",
    ),
    "answers_empty_list": ({"question": "q", "answers": []}, 2, "answers", "got an empty list", "bad answer"),
    "candidates_type": (
        {"question": "q", "answer": "a", "candidates": "doc"},
        2,
        "candidates",
        "expected a list",
        "bad candidates",
    ),
    "candidate_type": (
        {"question": "q", "answer": "a", "candidates": ["ok", 5]},
        2,
        "candidates[1]",
        "got int",
        "bad candidates",
    ),
    "candidate_without_text": (
        {"question": "q", "answer": "a", "candidates": ["ok", {"id": "d2"}]},
        2,
        "candidates[1].text",
        "missing",
        "candidate without text",
    ),
    "candidate_title_type": (
        {"question": "q", "answer": "a", "candidates": [{"text": "t", "title": 1}]},
        2,
        "candidates[0].title",
        "got int",
        "bad candidates",
    ),
    "candidate_metadata_type": (
        {"question": "q", "answer": "a", "candidates": [{"text": "t", "metadata": [1]}]},
        2,
        "candidates[0].metadata",
        "expected an object, got list",
        "bad metadata",
    ),
    "candidate_gold_flag_type": (
        {"question": "q", "answer": "a", "candidates": [{"text": "t", "gold": "yes"}]},
        2,
        "candidates[0].gold",
        "expected true or false",
        "bad gold",
    ),
    "gold_out_of_range": (
        {"question": "q", "answer": "a", "candidates": ["x", "y"], "gold": [2]},
        2,
        "gold",
        "index 2 out of range for 2 candidates",
        "gold out of range",
    ),
    "gold_negative": (
        {"question": "q", "answer": "a", "candidates": ["x"], "gold": [-1]},
        2,
        "gold",
        "out of range",
        "gold out of range",
    ),
    "gold_unknown_id": (
        {"question": "q", "answer": "a", "candidates": [{"text": "x", "id": "d1"}], "gold": ["d9"]},
        2,
        "gold",
        "id 'd9' matches no candidate id",
        "unknown gold id",
    ),
    "gold_type": (
        {"question": "q", "answer": "a", "candidates": ["x"], "gold": [True]},
        2,
        "gold",
        "got bool",
        "bad gold",
    ),
    "id_type": ({"question": "q", "answer": "a", "id": 1.5}, 2, "id", "got float", "bad id"),
    "metadata_type": (
        {"question": "q", "answer": "a", "metadata": "x"},
        2,
        "metadata",
        "got string",
        "bad metadata",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_JSONL))
def test_bad_jsonl_row_is_located(tmp_path: Path, case: str) -> None:
    bad, line, field, fragment, reason = _BAD_JSONL[case]
    p = _jsonl(tmp_path / "data.jsonl", _OK, bad, _OK)
    with pytest.raises(DataError) as info:
        load_examples(p)
    err = info.value
    assert (err.path, err.line, err.field, err.reason) == (str(p), line, field, reason)
    assert fragment in str(err)
    prefix = f"{p}:{line}: " + (f"field '{field}': " if field else "")
    assert str(err).startswith(prefix)


def test_error_message_reads_like_the_spec(tmp_path: Path) -> None:
    p = _jsonl(tmp_path / "data.jsonl", *([_OK] * 16), {"question": "q", "answer": 3})
    with pytest.raises(
        DataError, match=r"data\.jsonl:17: field 'answer': expected a string or a list of strings, got int$"
    ):
        load_examples(p)


def test_non_utf8_line_is_located(tmp_path: Path) -> None:
    p = tmp_path / "data.jsonl"
    p.write_bytes(b'{"question": "q", "answer": "a"}\n{"question": "caf\xe9", "answer": "a"}\n')
    with pytest.raises(DataError, match=r"data\.jsonl:2: not valid UTF-8") as info:
        load_examples(p)
    assert info.value.reason == "not UTF-8"


def test_non_utf8_csv_row_is_located(tmp_path: Path) -> None:
    p = tmp_path / "data.csv"
    p.write_bytes(b"question,answer\nok,fine\ncaf\xe9,a\n")
    with pytest.raises(DataError, match=r"data\.csv:3: not valid UTF-8"):
        load_examples(p)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    p = tmp_path / "data.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match="empty file") as info:
        load_examples(p)
    assert info.value.path == str(p)


def test_csv_wrong_column_count(tmp_path: Path) -> None:
    p = tmp_path / "data.csv"
    p.write_text("question,answer\nq1,a1\nq2,a2,extra\n")
    with pytest.raises(DataError, match=r"data\.csv:3: expected 2 columns, got 3"):
        load_examples(p)


def test_csv_malformed_candidates_cell(tmp_path: Path) -> None:
    p = tmp_path / "data.csv"
    p.write_text('question,answer,candidates\nq1,a1,"[""ok""]"\nq2,a2,"[""broken"\n')
    with pytest.raises(DataError, match=r"data\.csv:3: field 'candidates': malformed JSON"):
        load_examples(p)


def test_broken_json_array_names_its_line(tmp_path: Path) -> None:
    p = tmp_path / "data.json"
    p.write_text('[\n{"question": "q", "answer": "a"},\n{"question": "q" "answer": "a"}\n]\n')
    with pytest.raises(DataError, match=r"data\.json:3: malformed JSON"):
        load_examples(p)


def test_json_array_record_number(tmp_path: Path) -> None:
    p = tmp_path / "data.json"
    p.write_text(json.dumps([_OK, _OK, {"question": "q", "answer": 1}]))
    with pytest.raises(DataError, match=r"data\.json:3: field 'answer'"):
        load_examples(p)


def test_unreadable_parquet(tmp_path: Path) -> None:
    p = tmp_path / "data.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_examples(p)


def test_unsupported_extension_and_format(tmp_path: Path) -> None:
    p = tmp_path / "data.xml"
    p.write_text("<x/>")
    with pytest.raises(DataError, match=r"extension '\.xml'"):
        load_examples(p)
    with pytest.raises(ValueError, match="unknown format 'squad'"):
        load_examples(_jsonl(tmp_path / "ok.jsonl", _OK), format="squad")
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- skip_invalid


def test_skip_invalid_keeps_every_valid_row(tmp_path: Path) -> None:
    p = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"question": "q1", "answer": "a1"}),
        "{not json",
        json.dumps({"question": "q3", "answer": 3}),
        "",
        json.dumps({"question": "q5", "answer": "a5", "candidates": ["x"], "gold": [4]}),
        json.dumps({"question": "q6", "answer": "a6"}),
        json.dumps({"question": "q7", "answer": 7}),
    ]
    p.write_bytes(("\n".join(lines) + "\n").encode() + b'{"question": "\xff", "answer": "a"}\n')
    examples, summary = load_examples(p, skip_invalid=True)
    assert [e.question for e in examples] == ["q1", "q6"]
    assert summary.loaded == 2
    assert summary.skipped == {"malformed JSON": 1, "bad answer": 2, "gold out of range": 1, "not UTF-8": 1}
    assert [(f, line) for f, line, _ in summary.skipped_rows] == [(str(p), n) for n in (2, 3, 5, 7, 8)]
    assert "field 'answer'" in summary.skipped_rows[1][2]
    assert str(summary) == (
        "2 examples, 5 skipped (2 bad answer, 1 gold out of range, 1 malformed JSON, 1 not UTF-8)"
    )


def test_skip_invalid_on_file_level_problems(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    examples, summary = load_examples(empty, skip_invalid=True)
    assert examples == [] and summary.skipped == {"empty file": 1}
    assert summary.skipped_rows[0][:2] == (str(empty), 0)


def test_load_many_merges_files_and_directories(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    _jsonl(d / "a.jsonl", _OK, "{bad")
    write_qalog([QAExample("Q?", ["A"])], d / "b.csv")
    (d / "notes.md").write_text("ignored")
    examples, summary = load_many([d], skip_invalid=True)
    assert len(examples) == 2 and summary.loaded == 2
    assert summary.skipped == {"malformed JSON": 1}
    examples, _ = load_many(d / "b.csv")
    assert [e.question for e in examples] == ["Q?"]
    with pytest.raises(DataError, match="malformed JSON"):
        load_many([d])


def test_summary_str_and_merge() -> None:
    a = LoadSummary(loaded=1)
    a.skip("f", 2, "bad answer")
    b = LoadSummary(loaded=2)
    b.skip("g", 3, "bad answer")
    b.skip("g", 4, "no candidates")
    merged = a.merge(b)
    assert merged.loaded == 3 and merged.skipped == {"bad answer": 2, "no candidates": 1}
    assert str(merged) == "3 examples, 3 skipped (2 bad answer, 1 no candidates)"
    assert str(LoadSummary(loaded=1)) == "1 example, 0 skipped"


# ----------------------------------------------------------------------------- round-trips


def _rich_examples() -> list[QAExample]:
    return [
        QAExample(
            question='Who said "hi, there"?\nTwice',
            answers=["Ann", "Ann B., Jr."],
            candidates=[
                Candidate(
                    text='Ann said, "hi, there".',
                    id="d1",
                    title="Ann",
                    metadata={"score": 1.5, "tags": ["a"]},
                ),
                Candidate(text="Ünïcödé — 中文 text\twith tab", id="d2"),
                Candidate(text="no id, with metadata", metadata={"nested": {"x": None, "y": [1, 2]}}),
                Candidate(text="", title=""),
            ],
            gold=[0],
            id="row-1",
            metadata={"user": "u7", "ts": 1700000000},
        ),
        QAExample(question="No candidates?", answers=["none"], candidates=[], gold=None, id=None),
        QAExample(
            question="Known none gold", answers=["x"], candidates=[Candidate("a"), Candidate("b")], gold=[]
        ),
    ]


@pytest.mark.parametrize(
    "name", ["out.jsonl", "out.json", "out.csv", "out.tsv", "out.parquet", "out.jsonl.gz"]
)
def test_round_trip(tmp_path: Path, name: str) -> None:
    examples = _rich_examples()
    path = tmp_path / "sub" / name
    write_qalog(examples, path)
    loaded, summary = load_examples(path)
    assert loaded == examples
    assert summary.loaded == len(examples)
    assert detect_format(path) == "qalog"


def test_csv_accepts_plain_answer_column(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text(
        "id,question,answer,candidates,gold\n"
        '007,What?,"[not json, just text]","[""d0"", {""text"": ""d1"", ""id"": ""x""}]",x\n'
        "8,Who?,Bob,,\n"
    )
    a, b = load_examples(p)[0]
    assert a.id == "007" and a.answers == ["[not json, just text]"] and a.gold == [1]
    assert b.candidates == [] and b.gold is None


def test_excel_bom_crlf_and_pandas_parquet(tmp_path: Path) -> None:
    import pandas as pd

    csv = tmp_path / "excel.csv"
    csv.write_bytes(b"\xef\xbb\xbfquestion,answer\r\nQ1?,A1\r\n")
    assert [(e.question, e.answers) for e in load_examples(csv)[0]] == [("Q1?", ["A1"])]
    jsonl = tmp_path / "crlf.jsonl"
    jsonl.write_bytes(b'{"question": "Q?", "answer": "A"}\r\n\r\n')
    assert load_examples(jsonl)[1].loaded == 1
    frame = pd.DataFrame(
        {"question": ["Q?", "R?"], "answer": ["A", "B"], "candidates": [["x", "y"], []], "gold": [[1], None]},
        index=pd.Index(["r1", "r2"], name="row"),
    )
    frame.to_parquet(tmp_path / "pandas.parquet")
    a, b = load_examples(tmp_path / "pandas.parquet")[0]
    assert a.candidates == [Candidate("x"), Candidate("y")] and a.gold == [1]
    assert b.candidates == [] and b.gold is None
    # The index pandas stores as a column is user data when named, so it is kept as metadata.
    assert a.metadata == {"row": "r1"}


def test_gzip_is_read_transparently(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(_OK) + "\n")
    assert load_examples(p)[0][0].question == "Fine?"


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_word = _text.filter(lambda s: s.strip() != "")
_json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_candidate = st.builds(
    Candidate,
    text=_text,
    id=st.none() | _word,
    title=st.none() | _text,
    metadata=st.dictionaries(_text, _json_value, max_size=3),
)


@st.composite
def _examples(draw: st.DrawFn) -> QAExample:
    candidates = draw(st.lists(_candidate, max_size=5))
    gold = None
    if draw(st.booleans()):
        picked = draw(st.sets(st.integers(0, max(len(candidates) - 1, 0)), max_size=len(candidates)))
        # Loading spreads gold over identical copies, so a round-trippable example already has.
        contents = {candidates[i].content for i in picked if i < len(candidates)}
        gold = [i for i, c in enumerate(candidates) if c.content in contents]
    return QAExample(
        question=draw(_word),
        answers=draw(st.lists(_word, min_size=1, max_size=3, unique=True)),
        candidates=candidates,
        gold=gold,
        id=draw(st.none() | _word),
        metadata=draw(st.dictionaries(_text, _json_value, max_size=3)),
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(examples=st.lists(_examples(), min_size=1, max_size=4))
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_round_trip_property(tmp_path: Path, suffix: str, examples: list[QAExample]) -> None:
    path = tmp_path / f"prop{suffix}"
    write_qalog(examples, path)
    loaded, _ = load_examples(path, format="qalog")
    assert len(loaded) == len(examples)
    assert loaded == examples


# ----------------------------------------------------------------------------- filter_trainable


def test_filter_trainable_counts_and_locates(tmp_path: Path) -> None:
    rows = [
        {"question": "q1", "answer": "a", "candidates": ["x", "y", "z"]},
        {"question": "q2", "answer": "a"},
        {"question": "q3", "answer": "a", "candidates": ["x", "y"]},
        {"question": "q4", "answer": "a", "candidates": ["x"]},
    ]
    p = _jsonl(tmp_path / "log.jsonl", *rows)
    examples, _ = load_examples(p)
    kept, summary = filter_trainable(examples, k=2)
    assert [e.question for e in kept] == ["q1"]
    assert summary.loaded == 1
    assert summary.skipped == {"no candidates": 1, "at most k=2 candidates": 2}
    assert [(f, line) for f, line, _ in summary.skipped_rows] == [(str(p), 2), (str(p), 3), (str(p), 4)]
    kept1, _ = filter_trainable(examples, k=1)
    assert [e.question for e in kept1] == ["q1", "q3"]
    with pytest.raises(ValueError):
        filter_trainable(examples, k=0)


def test_filter_trainable_without_sources() -> None:
    examples = [QAExample("q", ["a"], id="x1"), QAExample("q", ["a"], [Candidate("c")] * 3)]
    kept, summary = filter_trainable(examples, k=2)
    assert len(kept) == 1 and summary.skipped_rows[0][:2] == ("x1", 1)
