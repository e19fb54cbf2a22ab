"""Properties of the relaxed top-k mask (DESIGN.md section 1, steps 2-4)."""

from __future__ import annotations

import math

import pytest
import torch

from gumbel_rag import gumbel_noise, relaxed_topk_log_mask, relaxed_topk_mask


def _scores() -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.tensor([[0.3, 2.0, -1.0, 0.5, 1.2], [1.0, -0.5, 0.8, 0.0, 0.0]])
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    return scores, valid


def test_values_in_unit_interval_and_padding_exactly_zero() -> None:
    scores, valid = _scores()
    m = relaxed_topk_mask(scores, 2, mask=valid, generator=torch.Generator().manual_seed(0))
    assert torch.all(m[valid] > 0)
    assert torch.all(m[valid] <= 1)
    assert torch.all(m[~valid] == 0)


def test_mask_sum_is_at_most_k() -> None:
    scores, valid = _scores()
    for k in (1, 2, 3):
        m = relaxed_topk_mask(scores, k, mask=valid, generator=torch.Generator().manual_seed(k))
        assert torch.all(m.sum(-1) <= k + 1e-5)
        assert torch.all(m.max(-1).values >= 1.0 / valid.sum(-1))


def test_same_seed_same_mask_and_different_seed_differs() -> None:
    scores, valid = _scores()
    a = relaxed_topk_mask(scores, 2, mask=valid, generator=torch.Generator().manual_seed(7))
    b = relaxed_topk_mask(scores, 2, mask=valid, generator=torch.Generator().manual_seed(7))
    c = relaxed_topk_mask(scores, 2, mask=valid, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_k_independent_samples_elementwise_max_as_in_the_paper() -> None:
    scores = torch.tensor([0.1, 1.0, -0.3, 0.7])
    k, kappa, tau = 3, 2.0, 0.7
    m = relaxed_topk_mask(scores, k, kappa=kappa, tau=tau, generator=torch.Generator().manual_seed(3))
    g = gumbel_noise((k, 4), generator=torch.Generator().manual_seed(3))
    expected = torch.softmax((kappa * scores + g) / tau, dim=-1).max(0).values
    torch.testing.assert_close(m, expected)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_noise_free_small_tau_is_hard_topk(k: int) -> None:
    scores = torch.tensor([[0.3, 2.0, -1.0, 0.5, 1.2, 0.9]])
    m = relaxed_topk_mask(scores, k, tau=1e-3, noise=False)
    hard = torch.zeros_like(scores)
    hard[0, scores[0].topk(k).indices] = 1.0
    torch.testing.assert_close(m, hard, atol=1e-4, rtol=1e-5)


def test_gradient_reaches_scores_and_matches_finite_differences() -> None:
    scores = torch.tensor([0.3, 1.4, -0.2, 0.9, 0.1], dtype=torch.float64, requires_grad=True)
    weights = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)

    def f(s: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(11)
        return (relaxed_topk_mask(s, 2, tau=0.8, generator=gen) * weights).sum()

    f(scores).backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(f, (scores,), eps=1e-6, atol=1e-5)


def test_noise_free_gradient_matches_finite_differences() -> None:
    scores = torch.tensor([0.3, 1.4, -0.2, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s: relaxed_topk_mask(s, 2, tau=0.9, noise=False), (scores,), eps=1e-6, atol=1e-5
    )


def test_log_mask_keeps_gradient_where_mask_underflows() -> None:
    # With a sharp mask M underflows to 0 in float32, but log M stays finite and differentiable.
    scores = torch.tensor([40.0, 0.0, -40.0], requires_grad=True)
    log_m = relaxed_topk_log_mask(scores, 1, tau=0.05, noise=False)
    assert torch.isfinite(log_m).all()
    assert math.isclose(log_m[0].item(), 0.0, abs_tol=1e-6)
    log_m[2].backward()
    assert scores.grad is not None and scores.grad[2] > 0


def test_bad_arguments_are_rejected() -> None:
    scores = torch.zeros(3)
    with pytest.raises(ValueError, match="k must be"):
        relaxed_topk_mask(scores, 0)
    with pytest.raises(ValueError, match="tau"):
        relaxed_topk_mask(scores, 1, tau=0)
    with pytest.raises(ValueError, match="mask shape"):
        relaxed_topk_mask(scores, 1, mask=torch.ones(4, dtype=torch.bool))


def test_gumbel_noise_statistics() -> None:
    g = gumbel_noise((200_000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.isfinite(g).all()
    # Standard Gumbel: mean = Euler-Mascheroni constant, variance = pi^2 / 6.
    assert abs(g.mean().item() - 0.5772) < 0.01
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03
