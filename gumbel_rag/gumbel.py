"""The Gumbel relaxed top-k mask (Huang et al., ACL 2025, eqs. 2-4; L2X subset relaxation)."""

from __future__ import annotations

import torch

from gumbel_rag.defaults import DEFAULT_KAPPA, DEFAULT_TAU

__all__ = ["gumbel_noise", "relaxed_topk_log_mask", "relaxed_topk_mask"]


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw standard Gumbel noise G = -log(-log u), u ~ U(0, 1)."""
    # Sample where the generator lives so a CPU generator seeds GPU runs reproducibly too.
    sample_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=sample_device, dtype=dtype).to(device)
    # u == 0 would give +inf; the smallest positive float keeps every sample finite.
    tiny = torch.finfo(dtype).tiny
    return -torch.log(-torch.log(u.clamp(min=tiny, max=1.0 - torch.finfo(dtype).eps)))


def _valid_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match scores shape {tuple(scores.shape)}")
    return mask.to(dtype=torch.bool, device=scores.device)


def relaxed_topk_log_mask(
    scores: torch.Tensor,
    k: int,
    *,
    kappa: float = DEFAULT_KAPPA,
    tau: float = DEFAULT_TAU,
    mask: torch.Tensor | None = None,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return log M of the relaxed top-k mask; padded entries are -inf.

    Computed in the log domain so that M_i stays strictly positive (no underflow to 0, which
    would cut the gradient) and so that the reader can add it straight to attention logits.

    With noise (the method): k independent relaxed samples
    ``m^(j) = softmax((kappa * w + G^(j)) / tau)`` and ``M = max_j m^(j)``.

    Without noise (the ablation) k independent samples would all be identical and select a
    single document, so the k samples are drawn successively without replacement instead
    (Xie & Ermon, 2019): sample j uses the logits of sample j-1 lowered by ``log(1 - m^(j-1))``
    (before the division by tau).
    As tau -> 0 this gives the hard top-k indicator.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    valid = _valid_mask(scores, mask)
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    logits = torch.where(valid, kappa * scores, neg_inf)
    if noise:
        noise_shape = (k, *scores.shape)
        g = gumbel_noise(noise_shape, generator=generator, device=scores.device, dtype=scores.dtype)
        samples = torch.log_softmax((logits.unsqueeze(0) + g) / tau, dim=-1)
    else:
        samples = _successive_log_samples(logits, k, tau)
    log_m = samples.max(dim=0).values
    # A row with no valid entry would be all NaN after softmax; keep it all -inf instead.
    return torch.where(valid, log_m, neg_inf)


def _successive_log_samples(logits: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    out = []
    current = logits
    for _ in range(k):
        log_m = torch.log_softmax(current / tau, dim=-1)
        out.append(log_m)
        # Clamp keeps log(1 - m) finite when a sample is (numerically) one-hot.
        m = log_m.exp().clamp(max=1.0 - 1e-6)
        current = current + torch.log1p(-m)
    return torch.stack(out)


def relaxed_topk_mask(
    scores: torch.Tensor,
    k: int,
    *,
    kappa: float = DEFAULT_KAPPA,
    tau: float = DEFAULT_TAU,
    mask: torch.Tensor | None = None,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return the relaxed top-k mask M in (0, 1] over the last dim (padded entries exactly 0).

    ``scores`` is (n,) or (batch, n); ``mask`` (same shape, bool) marks real candidates so that
    examples with different candidate counts can share a batch. See :func:`relaxed_topk_log_mask`.
    """
    return relaxed_topk_log_mask(
        scores, k, kappa=kappa, tau=tau, mask=mask, noise=noise, generator=generator
    ).exp()
