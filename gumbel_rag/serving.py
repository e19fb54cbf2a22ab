"""Serving the reranker behind a framework: one lazy, thread-safe loader and one ranking call.

The LangChain, LlamaIndex and Haystack integrations hold a :class:`LazyReranker` and build
:class:`~gumbel_rag.serving_options.ServingOptions` from their fields on each call; everything else they
do is translating their documents to texts and the ranking back.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

from gumbel_rag.reranker import GumbelReranker, Ranking
from gumbel_rag.serving_options import ServingOptions

__all__ = ["LazyReranker", "rank_texts"]


class LazyReranker:
    """A reranker loaded on first use, and loaded again when an option it depends on changes; thread-safe.

    Concurrent first calls load the model once. ``copy.copy`` gives a holder that shares the loaded model
    (and reloads on its own afterwards); ``copy.deepcopy`` copies the model where it can (an OpenVINO
    graph or an embedding cache cannot be copied: that copy loads its own on first use); pickling drops
    the model (it is loaded again where it is unpickled).
    """

    def __init__(self) -> None:
        """An empty holder; nothing is loaded until :meth:`get`."""
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[Any, ...], GumbelReranker] | None = None

    @property
    def loaded(self) -> GumbelReranker | None:
        """The model loaded last, or None."""
        loaded = self._loaded
        return None if loaded is None else loaded[1]

    def get(self, options: ServingOptions) -> GumbelReranker:
        """The model for ``options``: the loaded one if its load options are unchanged, else a new one."""
        key = options.load_key()
        loaded = self._loaded
        if loaded is None or loaded[0] != key:
            with self._lock:
                loaded = self._loaded
                if loaded is None or loaded[0] != key:
                    reranker = GumbelReranker.from_pretrained(
                        options.model, **options.from_pretrained_kwargs()
                    )
                    loaded = self._loaded = (key, reranker)
        reranker = loaded[1]
        # Batching only: applied without a reload.
        reranker.batch_size = options.batch_size
        return reranker

    def __copy__(self) -> LazyReranker:
        """A holder of its own that starts with the same loaded model."""
        clone = LazyReranker()
        clone._loaded = self._loaded
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> LazyReranker:
        """A holder with a deep copy of the model, or an empty one where the model cannot be copied."""
        clone = LazyReranker()
        try:
            clone._loaded = copy.deepcopy(self._loaded, memo)
        except (TypeError, RuntimeError):
            clone._loaded = None
        return clone

    def __getstate__(self) -> dict[str, Any]:
        """Nothing: a model is not pickled with the component that serves it."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """An empty holder."""
        self.__init__()  # type: ignore[misc]


def rank_texts(lazy: LazyReranker, options: ServingOptions, query: str, texts: Sequence[str]) -> Ranking:
    """Rank ``texts`` for ``query`` under the options' rules (top-n, threshold, scaling), best first.

    An empty list loads no model. The ranking says how many inputs were truncated (each truncated call
    also logs a WARNING with the count).
    """
    if not isinstance(query, str):
        raise TypeError(f"query is {type(query).__name__}, expected str")
    if not texts:
        return Ranking()
    return lazy.get(options).rerank(
        query,
        texts,
        top_k=options.top_n,
        score_threshold=options.score_threshold,
        scale_score=options.scale_score,
    )
