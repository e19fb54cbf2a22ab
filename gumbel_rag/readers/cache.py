"""Key/value cache helpers shared by the readers (transformers 5 cache API)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["cache_kwarg", "dynamic_cache"]


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5 renamed past_key_values to cache; use whichever forward() takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def dynamic_cache(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> Any:
    """A fresh DynamicCache over per-layer tensors (its update() concatenates, never writes into them)."""
    from transformers import DynamicCache

    # No config: every layer is a plain full DynamicLayer, so a sliding-window layer does not drop keys
    # we still want to bias (the window is enforced by our own mask, on position ids).
    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        cache.update(k, v, layer)
    return cache
