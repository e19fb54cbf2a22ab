"""Draw docs/figures/relaxed_topk_mask.png from the real ``gumbel_rag.relaxed_topk_mask``.

Run ``python scripts/mask_figure.py`` after changing the mask; the docs (method page) show the PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gumbel_rag.gumbel import relaxed_topk_mask

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "relaxed_topk_mask.png"

# Eight candidates' scores after the kappa scale (kappa * w), in the range the training defaults give a
# bi-encoder (kappa 0.25 times cosine / 0.05), well separated so the top 3 are easy to see.
SCORES = [3.0, 2.6, 2.2, 1.5, 1.0, 0.6, 0.2, -0.5]
K = 3
TAU = 0.5
# SCORES are already scaled, so the mask must not scale them again.
KAPPA = 1.0
DRAWS_SHOWN = 6
DRAWS_AVERAGED = 2000


def draw(output: Path = DEFAULT_OUTPUT, seed: int = 0) -> Path:
    """Write the three-panel figure of the mask (scores, single draws, mean over draws by tau)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = torch.tensor(SCORES)
    n = len(SCORES)
    generator = torch.Generator().manual_seed(seed)
    docs = [f"d{i + 1}" for i in range(n)]

    fig, (ax_w, ax_draws, ax_tau) = plt.subplots(
        1, 3, figsize=(14, 3.9), gridspec_kw={"width_ratios": [1, 1.35, 1.35]}
    )
    colors = ["tab:green" if i < K else "tab:gray" for i in range(n)]
    ax_w.bar(docs, SCORES, color=colors)
    ax_w.axhline(0, color="black", linewidth=0.6)
    ax_w.set(title=f"scaled scores kappa·w (green: hard top-{K})", ylabel="kappa·w_i")

    # One row per independent draw: each is a different soft subset of about k documents.
    rows = torch.stack(
        [relaxed_topk_mask(scores, K, kappa=KAPPA, tau=TAU, generator=generator) for _ in range(DRAWS_SHOWN)]
    )
    image = ax_draws.imshow(rows.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r in range(DRAWS_SHOWN):
        for c in range(n):
            value = rows[r, c].item()
            ax_draws.text(
                c,
                r,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if value > 0.6 else "white",
            )
    ax_draws.set_xticks(range(n), docs)
    ax_draws.set_yticks(range(DRAWS_SHOWN), [f"draw {r + 1}" for r in range(DRAWS_SHOWN)])
    ax_draws.set_title(f"mask M for {DRAWS_SHOWN} Gumbel draws (k={K}, tau={TAU})")
    fig.colorbar(image, ax=ax_draws, fraction=0.04, pad=0.02, label="M_i")

    width = 0.8 / 5
    for j, tau in enumerate([0.1, 0.5, 1.0, 2.0]):
        batch = scores.expand(DRAWS_AVERAGED, n)
        mean = relaxed_topk_mask(batch, K, kappa=KAPPA, tau=tau, generator=generator).mean(0)
        ax_tau.bar([i + (j - 2) * width for i in range(n)], mean.numpy(), width, label=f"E[M], tau={tau}")
    # The no-noise ablation at a low temperature is (almost) the hard top-k indicator.
    no_noise = relaxed_topk_mask(scores, K, kappa=KAPPA, tau=0.1, noise=False)
    ax_tau.bar(
        [i + 2 * width for i in range(n)],
        no_noise.numpy(),
        width,
        color="black",
        label="no noise, tau=0.1",
    )
    ax_tau.set_xticks(range(n), docs)
    ax_tau.set(title=f"mean mask over {DRAWS_AVERAGED} draws", ylabel="M_i", ylim=(0, 1.05))
    ax_tau.legend(fontsize=7, loc="upper right")

    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    # No software version in the metadata, so regenerating with another matplotlib changes no bytes
    # unless the pixels change.
    fig.savefig(output, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return output


def main() -> None:
    """Command line: ``python scripts/mask_figure.py [--output PNG]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="PNG to write (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Gumbel noise (default: %(default)s)")
    args = parser.parse_args()
    print(f"wrote {draw(args.output, args.seed)}")


if __name__ == "__main__":
    main()
