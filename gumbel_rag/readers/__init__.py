"""Frozen reader LLMs whose attention to each document is scaled by a relaxed mask M (log M on the logits)."""

from gumbel_rag.readers.base import Reader, ReaderBatch
from gumbel_rag.readers.decoder import DecoderBatch, DecoderReader
from gumbel_rag.readers.fid import FiDBatch, FiDReader
from gumbel_rag.readers.gguf import default_gguf_path, load_default_model
from gumbel_rag.readers.loading import load_reader
from gumbel_rag.readers.state_cache import DocumentStateCache

__all__ = [
    "DecoderBatch",
    "DecoderReader",
    "DocumentStateCache",
    "FiDBatch",
    "FiDReader",
    "Reader",
    "ReaderBatch",
    "default_gguf_path",
    "load_default_model",
    "load_reader",
]
