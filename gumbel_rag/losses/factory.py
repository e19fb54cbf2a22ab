"""Build a training loss from its method name, so the CLI, the trainer and the recipes agree on names."""

from __future__ import annotations

from gumbel_rag.defaults import METHODS
from gumbel_rag.losses.adist import ADistLoss
from gumbel_rag.losses.base import RerankLoss
from gumbel_rag.losses.emdr import EMDRLoss
from gumbel_rag.losses.gumbel import GumbelRerankLoss
from gumbel_rag.losses.loop import LOOPLoss
from gumbel_rag.losses.pdist import PDistLoss
from gumbel_rag.losses.supervised import SupervisedListwiseLoss
from gumbel_rag.readers.base import Reader

__all__ = ["METHODS", "build_loss"]


def build_loss(
    method: str,
    reader: Reader | None,
    *,
    k: int = 5,
    kappa: float = 0.25,
    tau: float = 1.0,
    noise: bool = True,
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
) -> RerankLoss:
    """The loss of ``method`` (one of METHODS); every method but ``supervised`` needs a reader."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "supervised":
        return SupervisedListwiseLoss(temperature=temperature)
    if reader is None:
        raise ValueError(f"method {method!r} needs a reader")
    if method == "gumbel":
        return GumbelRerankLoss(reader, k=k, kappa=kappa, tau=tau, noise=noise)
    if method == "emdr":
        return EMDRLoss(reader, temperature=temperature)
    distil = {"pdist": PDistLoss, "loop": LOOPLoss, "adist": ADistLoss}[method]
    return distil(reader, temperature=temperature, teacher_temperature=teacher_temperature)
