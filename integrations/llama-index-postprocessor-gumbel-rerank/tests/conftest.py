"""Fixtures for the LlamaIndex integration tests: a local embedding model and a small corpus."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import Document
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import PrivateAttr

from gumbel_rag import GumbelReranker


class EncoderEmbedding(BaseEmbedding):
    """LlamaIndex embeddings from a gumbel-rag bi-encoder: local, offline, deterministic."""

    _encoder: GumbelReranker = PrivateAttr()

    def __init__(self, encoder: GumbelReranker, **kwargs: Any) -> None:
        """Wrap a loaded bi-encoder."""
        super().__init__(model_name="gumbel-rag-bi-encoder", **kwargs)
        self._encoder = encoder

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encoder.encode([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encoder.encode([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encoder.encode(list(texts)).tolist()


@pytest.fixture(scope="session")
def default_encoder() -> GumbelReranker:
    """The packaged default bi-encoder (all-MiniLM-L6-v2), loaded once."""
    return GumbelReranker.from_pretrained(None, device="cpu")


@pytest.fixture(scope="session")
def encoder_embedding(default_encoder: GumbelReranker) -> EncoderEmbedding:
    """A real embedding model for VectorStoreIndex, from the default bi-encoder."""
    return EncoderEmbedding(default_encoder)


CORPUS = [
    ("banana", "Bananas are a tropical fruit rich in potassium.", {"title": "Banana", "topic": "food"}),
    ("python", "Python is a programming language created by Guido van Rossum.", {"title": "Python"}),
    ("berlin", "Berlin is the capital and largest city of Germany.", {"title": "Berlin", "topic": "geo"}),
    ("everest", "Mount Everest is Earth's highest mountain above sea level.", {"title": "Everest"}),
    ("reef", "The Great Barrier Reef is the largest coral reef system in the world.", {"title": "Reef"}),
    ("paris", "Paris is the capital and largest city of France.", {"title": "Paris", "topic": "geo"}),
]

# query -> id of the one corpus document that answers it
QUERIES = {
    "What is the capital of France?": "paris",
    "Who created the Python programming language?": "python",
    "Which is the highest mountain on Earth?": "everest",
}


@pytest.fixture()
def queries() -> dict[str, str]:
    """Query -> id of the corpus document that answers it."""
    return dict(QUERIES)


@pytest.fixture()
def documents() -> list[Document]:
    """Six short documents with ids and metadata; the answer to each query is last or in the middle."""
    return [Document(text=text, metadata=dict(meta), id_=doc_id) for doc_id, text, meta in CORPUS]
