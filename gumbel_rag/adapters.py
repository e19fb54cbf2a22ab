"""Low-rank adapters (LoRA, through ``peft``) on a reranker: train a few parameters, save a plain model.

LoRA (Hu et al., ICLR 2022, arXiv 2106.09685) freezes the reranker and trains a low-rank update
``W + (alpha / r) B A`` of chosen linear layers; with fewer degrees of freedom the model forgets less of
what it knew (Biderman et al., "LoRA Learns Less and Forgets Less", TMLR 2024). The update is merged into
the weights before the model is saved, so the output is an ordinary sentence-transformers directory that
loads without ``peft``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gumbel_rag.errors import ConfigError

if TYPE_CHECKING:
    from gumbel_rag.reranker import GumbelReranker

__all__ = ["DEFAULT_LORA_TARGETS", "add_lora", "merge_lora"]

# The attention projections of BERT-style encoders (all-MiniLM, BGE, most cross-encoders): query and value,
# as in the LoRA paper.
DEFAULT_LORA_TARGETS = ("query", "value")


def _backbone(reranker: GumbelReranker) -> Any:
    first = reranker.model[0]
    return getattr(first, "model", None) or first.auto_model


def add_lora(
    reranker: GumbelReranker,
    rank: int,
    *,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS,
) -> Any:
    """Inject LoRA layers into the reranker's transformer in place; only they require grad afterwards.

    Returns the ``peft`` model handle that :func:`merge_lora` takes. ``alpha`` defaults to ``2 * rank``.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("LoRA needs the peft package: pip install peft") from exc
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"lora_rank must be an integer >= 1, got {rank!r}")
    backbone = _backbone(reranker)
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise ConfigError(f"LoRA target modules {missing} are not in {type(backbone).__name__}")
    config = LoraConfig(
        r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout, target_modules=list(target_modules)
    )
    # get_peft_model replaces the target layers inside the backbone itself, so the sentence-transformers
    # pipeline around it runs the adapted layers without being rewired; the rest of the reranker is frozen.
    handle = get_peft_model(backbone, config)
    for name, param in reranker.named_parameters():
        param.requires_grad_("lora_" in name)
    return handle


def merge_lora(reranker: GumbelReranker, handle: Any) -> None:
    """Fold the LoRA update into the weights and remove the adapter layers (all weights train again)."""
    handle.merge_and_unload()
    reranker.requires_grad_(True)
