"""Build a training loss from its method name and options: the one place that maps names to losses."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from gumbel_rag.defaults import DEFAULT_ANCHOR_WEIGHT, METHODS
from gumbel_rag.errors import ConfigError
from gumbel_rag.losses.adist import ADistLoss
from gumbel_rag.losses.anchor import AnchoredLoss
from gumbel_rag.losses.base import RerankLoss
from gumbel_rag.losses.emdr import EMDRLoss
from gumbel_rag.losses.gumbel import GumbelRerankLoss
from gumbel_rag.losses.loop import LOOPLoss
from gumbel_rag.losses.pdist import PDistLoss
from gumbel_rag.losses.supervised import SupervisedListwiseLoss

if TYPE_CHECKING:
    from gumbel_rag.readers.base import Reader
    from gumbel_rag.reranker import GumbelReranker

__all__ = ["LOSSES", "METHODS", "build_loss", "loss_options"]

LOSSES: dict[str, type[RerankLoss]] = {
    "gumbel": GumbelRerankLoss,
    "emdr": EMDRLoss,
    "pdist": PDistLoss,
    "loop": LOOPLoss,
    "adist": ADistLoss,
    "supervised": SupervisedListwiseLoss,
}
assert tuple(LOSSES) == METHODS, "defaults.METHODS and LOSSES must list the same methods"


def loss_options(method: str) -> dict[str, Any]:
    """The hyperparameters ``method``'s loss takes, with their defaults."""
    if method not in LOSSES:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    params = inspect.signature(LOSSES[method]).parameters
    return {name: p.default for name, p in params.items() if name != "reader"}


def build_loss(
    method: str,
    reader: Reader | None = None,
    *,
    anchor_to: GumbelReranker | None = None,
    anchor_weight: float = DEFAULT_ANCHOR_WEIGHT,
    **options: Any,
) -> RerankLoss:
    """The loss of ``method`` (one of METHODS) with ``options`` (its hyperparameters; unset ones default).

    Every method but ``supervised`` needs a reader. An option the method does not take is refused
    (ConfigError naming it), so a setting is never silently ignored. ``anchor_weight > 0`` wraps the loss
    in :class:`~gumbel_rag.losses.anchor.AnchoredLoss` towards a frozen copy of ``anchor_to`` (the
    reranker about to be trained, as it is now).
    """
    loss = _method_loss(method, reader, options)
    if not anchor_weight:
        return loss
    if anchor_to is None:
        raise ConfigError("anchor_weight needs anchor_to: the reranker whose current ranking is the anchor")
    try:
        return AnchoredLoss(loss, anchor_to, anchor_weight)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _method_loss(method: str, reader: Reader | None, options: dict[str, Any]) -> RerankLoss:
    accepted = loss_options(method)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no options"
        raise ConfigError(f"method {method!r} does not take {', '.join(unknown)} (it takes: {takes})")
    cls = LOSSES[method]
    try:
        if "reader" in inspect.signature(cls).parameters:
            if reader is None:
                raise ConfigError(f"method {method!r} needs a reader")
            return cls(reader, **options)
        return cls(**options)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"method {method!r}: {exc}") from exc
