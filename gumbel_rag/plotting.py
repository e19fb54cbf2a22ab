"""Plot a run's training loss and dev metrics from its metrics.jsonl into a PNG."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_curves"]


def plot_curves(metrics_file: Path, png: Path) -> Path:
    """Draw train loss (left) and dev Recall@k (right) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    if metrics_file.is_file():
        rows = [json.loads(line) for line in metrics_file.read_text(encoding="utf8").splitlines() if line]
    train = [r for r in rows if r.get("split") == "train"]
    dev = [r for r in rows if r.get("split") == "dev"]
    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        ax_loss.plot(steps, losses, alpha=0.35, label="per step")
        window = max(1, len(losses) // 20)
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax_loss.plot(steps, smooth, label=f"moving mean ({window})")
        ax_loss.legend()
    ax_loss.set(title="reader answer loss (train)", xlabel="optimizer step", ylabel="NLL per answer token")
    for key in sorted({k for r in dev for k in r if k.startswith("recall@")}):
        ax_dev.plot([r["step"] for r in dev], [r[key] for r in dev], marker="o", label=key)
    if dev:
        ax_dev.legend()
    ax_dev.set(title="dev retrieval", xlabel="optimizer step", ylabel="Recall@k", ylim=(0, 1.02))
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
