"""Training losses for rerankers; one loss per module, all sharing the `RerankLoss` interface."""

from gumbel_rag.losses.adist import ADistLoss
from gumbel_rag.losses.anchor import AnchoredLoss
from gumbel_rag.losses.base import ReaderLoss, RerankLoss
from gumbel_rag.losses.emdr import EMDRLoss
from gumbel_rag.losses.factory import LOSSES, METHODS, build_loss, loss_options
from gumbel_rag.losses.gumbel import GumbelRerankLoss
from gumbel_rag.losses.loop import LOOPLoss
from gumbel_rag.losses.pdist import PDistLoss
from gumbel_rag.losses.supervised import SupervisedListwiseLoss

__all__ = [
    "LOSSES",
    "METHODS",
    "ADistLoss",
    "AnchoredLoss",
    "EMDRLoss",
    "GumbelRerankLoss",
    "LOOPLoss",
    "PDistLoss",
    "ReaderLoss",
    "RerankLoss",
    "SupervisedListwiseLoss",
    "build_loss",
    "loss_options",
]
