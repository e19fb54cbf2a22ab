"""The distillation baselines and the supervised loss against independent re-computations of their formulas.

Each teacher signal is recomputed the slow, obvious way: the reader given only the documents it should see
(a fresh prepare() over that subset), not the masked answer pass the losses use.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gumbel_rag.data import Candidate, QAExample
from gumbel_rag.defaults import DEFAULT_K, DEFAULT_KAPPA, DEFAULT_TAU
from gumbel_rag.errors import ConfigError
from gumbel_rag.losses import (
    ADistLoss,
    EMDRLoss,
    GumbelRerankLoss,
    LOOPLoss,
    PDistLoss,
    SupervisedListwiseLoss,
    build_loss,
    loss_options,
)
from gumbel_rag.readers import load_reader

QUESTIONS = ["Where was the author of Blue Lake born?", "Who built the tower?"]
DOCUMENTS = [
    ["Blue Lake is a novel by Ada Moss.", "Ada Moss was born in Tarsk.", "Tarsk is a city.", "Cats purr."],
    ["The tower was built by Ivo Lund.", "Ivo Lund was an engineer."],
]
ANSWERS = ["Tarsk", "Ivo Lund"]


@pytest.fixture(scope="module")
def reader(tiny_reader_dir: Path):
    return load_reader(str(tiny_reader_dir), device="cpu", max_document_tokens=24)


@pytest.fixture(scope="module")
def batch(reader):
    return reader.prepare(QUESTIONS, DOCUMENTS, ANSWERS)


def _scores(batch) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch.candidate_mask.shape, requires_grad=True)


def _subset_nll(reader, b: int, keep: list[int]) -> float:
    """Reader answer NLL for example b given only the documents in keep (a fresh, unmasked prepare)."""
    return reader.loss([QUESTIONS[b]], [[DOCUMENTS[b][i] for i in keep]], [ANSWERS[b]]).item()


def _kl(teacher_logits: list[float], scores: torch.Tensor) -> torch.Tensor:
    teacher = torch.softmax(torch.tensor(teacher_logits), -1)
    student = torch.log_softmax(scores, -1)
    return (teacher * (teacher.log() - student)).sum()


def test_pdist_teacher_is_the_reader_given_one_document(reader, batch) -> None:
    scores = _scores(batch)
    loss = PDistLoss(reader, teacher_temperature=0.5)(scores, batch.candidate_mask, batch)
    expected = []
    for b, docs in enumerate(DOCUMENTS):
        g = [-_subset_nll(reader, b, [i]) / 0.5 for i in range(len(docs))]
        expected.append(_kl(g, scores[b, : len(docs)]))
    torch.testing.assert_close(loss, torch.stack(expected).mean(), atol=1e-4, rtol=1e-4)


def test_loop_teacher_is_the_reader_without_one_document(reader, batch) -> None:
    scores = _scores(batch)
    loss = LOOPLoss(reader)(scores, batch.candidate_mask, batch)
    expected = []
    for b, docs in enumerate(DOCUMENTS):
        g = [_subset_nll(reader, b, [j for j in range(len(docs)) if j != i]) for i in range(len(docs))]
        expected.append(_kl(g, scores[b, : len(docs)]))
    torch.testing.assert_close(loss, torch.stack(expected).mean(), atol=1e-4, rtol=1e-4)


def test_emdr_marginalises_single_document_token_likelihoods(reader, batch) -> None:
    scores = _scores(batch)
    loss = EMDRLoss(reader, temperature=2.0)(scores, batch.candidate_mask, batch)
    expected = []
    for b, docs in enumerate(DOCUMENTS):
        per_doc = []
        for i in range(len(docs)):
            alone = reader.prepare([QUESTIONS[b]], [[docs[i]]], [ANSWERS[b]])
            lp, mask = reader.answer_token_logprobs(alone, torch.zeros(1, 1))
            per_doc.append(lp[0][mask[0]])
        log_p = torch.log_softmax(scores[b, : len(docs)] / 2.0, -1)
        joint = torch.logsumexp(log_p[:, None] + torch.stack(per_doc), dim=0)
        expected.append(-joint.mean())
    torch.testing.assert_close(loss, torch.stack(expected).mean(), atol=1e-4, rtol=1e-4)


def test_token_logprobs_agree_with_answer_loss(reader, batch) -> None:
    log_mask = torch.randn(batch.candidate_mask.shape).clamp(max=0)
    lp, mask = reader.answer_token_logprobs(batch, log_mask)
    from_tokens = -(lp * mask).sum(-1) / mask.sum(-1)
    torch.testing.assert_close(from_tokens, reader.answer_loss(batch, log_mask), atol=1e-5, rtol=1e-5)


def test_adist_attention_mass_is_a_share_and_ignores_slot_order(reader) -> None:
    docs = ["Ada Moss was born in Tarsk.", "Cats purr loudly.", "Ada Moss was born in Tarsk."]
    batch = reader.prepare([QUESTIONS[0]], [docs], [ANSWERS[0]])
    mass = reader.document_attention(batch)
    assert mass.shape == (1, 3)
    assert (mass > 0).all() and mass.sum() < 1  # the rest goes to the prefix and the question
    # Documents are read in parallel, so identical texts in different slots get identical attention.
    torch.testing.assert_close(mass[0, 0], mass[0, 2])
    assert abs(mass[0, 0] - mass[0, 1]) > 1e-6
    # The attention implementation is restored after the eager pass.
    assert reader.model.config._attn_implementation != "eager"


def test_adist_loss_is_the_kl_to_renormalised_attention(reader, batch) -> None:
    scores = _scores(batch)
    loss = ADistLoss(reader)(scores, batch.candidate_mask, batch)
    mass = reader.document_attention(batch)
    expected = [
        _kl(mass[b, : len(docs)].log().tolist(), scores[b, : len(docs)]) for b, docs in enumerate(DOCUMENTS)
    ]
    torch.testing.assert_close(loss, torch.stack(expected).mean(), atol=1e-5, rtol=1e-5)


def test_supervised_listwise_loss_and_its_errors(batch) -> None:
    scores = _scores(batch)
    gold = torch.zeros_like(batch.candidate_mask)
    gold[0, [0, 1]] = True  # row 1 unlabelled: ignored
    loss = SupervisedListwiseLoss()(scores, batch.candidate_mask, gold)
    expected = -torch.log_softmax(scores[0], -1)[[0, 1]].mean()
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="shape"):
        SupervisedListwiseLoss()(scores, batch.candidate_mask, gold[:, :2])


def test_supervised_prepares_the_gold_mask_and_skips_unlabelled_rows() -> None:
    rows = [
        QAExample("q1", ["a"], [Candidate("x"), Candidate("y"), Candidate("z")], gold=[2]),
        QAExample("q2", ["b"], [Candidate("x"), Candidate("y")], gold=[0, 1]),
        QAExample("q3", ["c"], [Candidate("x"), Candidate("y")], gold=None),
    ]
    loss = SupervisedListwiseLoss()
    assert loss.prepare(rows[:2]).tolist() == [[False, False, True], [True, True, False]]
    assert [loss.skip_reason(r) for r in rows] == [None, None, "no gold candidate"]


@pytest.mark.parametrize("method", ["gumbel", "emdr", "pdist", "loop", "adist", "supervised"])
def test_every_method_trains_the_scores_only(method: str, reader, batch) -> None:
    loss_fn = build_loss(method, reader, **({"k": 2} if method == "gumbel" else {}))
    scores = _scores(batch)
    gold = torch.zeros_like(batch.candidate_mask)
    gold[:, 1] = True
    prepared = gold if method == "supervised" else batch
    loss = loss_fn(scores, batch.candidate_mask, prepared, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and scores.grad is not None
    assert scores.grad[batch.candidate_mask].abs().sum() > 0
    assert scores.grad[~batch.candidate_mask].abs().sum() == 0  # padding slots get nothing
    assert all(p.grad is None for p in reader.model.parameters())
    assert not list(loss_fn.parameters())  # the reader is never a submodule (never saved or synced)


def test_a_single_candidate_row_gives_no_distillation_signal(reader) -> None:
    batch = reader.prepare([QUESTIONS[1]], [[DOCUMENTS[1][0]]], [ANSWERS[1]])
    for loss_fn in (PDistLoss(reader), LOOPLoss(reader), ADistLoss(reader)):
        scores = torch.zeros(1, 1, requires_grad=True)
        loss = loss_fn(scores, batch.candidate_mask, batch)
        loss.backward()
        assert loss.item() == pytest.approx(0.0, abs=1e-7) and torch.isfinite(scores.grad).all()


def test_build_loss_names_and_errors(reader) -> None:
    gumbel = build_loss("gumbel", reader, k=3, kappa=1.0, tau=0.5)
    assert isinstance(gumbel, GumbelRerankLoss) and gumbel.reader is reader
    assert gumbel.options() == {"method": "gumbel", "k": 3, "kappa": 1.0, "tau": 0.5, "noise": True}
    assert isinstance(build_loss("supervised", None), SupervisedListwiseLoss)
    # Defaults are defined once (gumbel_rag.defaults) and are what an unset option gets.
    assert loss_options("gumbel") == {
        "k": DEFAULT_K,
        "kappa": DEFAULT_KAPPA,
        "tau": DEFAULT_TAU,
        "noise": True,
    }
    assert build_loss("gumbel", reader).options()["kappa"] == DEFAULT_KAPPA
    with pytest.raises(ConfigError, match="unknown method 'rl'"):
        build_loss("rl", reader)
    with pytest.raises(ConfigError, match="needs a reader"):
        build_loss("pdist", None)
    with pytest.raises(ConfigError, match="method 'emdr' does not take k, tau"):
        build_loss("emdr", reader, k=2, tau=0.5)
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ConfigError, match="tau"):
            build_loss("gumbel", reader, tau=bad)
    with pytest.raises(ConfigError, match="kappa must be a finite number"):
        build_loss("gumbel", reader, kappa=float("nan"))
    with pytest.raises(ValueError, match="teacher_temperature"):
        PDistLoss(reader, teacher_temperature=0)
