"""Fixtures for the langchain-gumbel tests: the real default model and embeddings over it."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_gumbel import GumbelRerank

from gumbel_rag import GumbelReranker


class RerankerEmbeddings(Embeddings):
    """LangChain embeddings over a gumbel-rag bi-encoder, so retrieval in tests is realistic and offline."""

    def __init__(self, reranker: GumbelReranker) -> None:
        self.reranker = reranker

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.reranker.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


CORPUS = [
    Document(
        page_content="Paris is the capital and most populous city of France.",
        id="paris",
        metadata={"title": "Paris", "source": "wiki/Paris", "tags": ["city", "france"]},
    ),
    Document(
        page_content="The banana is an elongated, edible fruit produced by flowering plants.",
        id="banana",
        metadata={"title": "Banana", "source": "wiki/Banana"},
    ),
    Document(
        page_content="Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
        id="everest",
        metadata={"title": "Mount Everest", "source": "wiki/Everest"},
    ),
    Document(
        page_content="Python is a high-level programming language created by Guido van Rossum.",
        id="python",
        metadata={"title": "Python", "source": "wiki/Python"},
    ),
    Document(
        page_content="The Nile is a major north-flowing river in northeastern Africa.",
        id="nile",
        metadata={"title": "Nile", "source": "wiki/Nile"},
    ),
]


@pytest.fixture(scope="session")
def default_rerank() -> GumbelRerank:
    """GumbelRerank over the real offline default model, loaded once for the session.

    Tests derive variants with ``model_copy(update=...)``, which shares the loaded model.
    """
    rerank = GumbelRerank(device="cpu")
    assert rerank.reranker is not None
    return rerank


@pytest.fixture(scope="session")
def default_reranker(default_rerank: GumbelRerank) -> GumbelReranker:
    """The core GumbelReranker of the default model (the same loaded instance)."""
    return default_rerank.reranker


@pytest.fixture(scope="session")
def embeddings(default_reranker: GumbelReranker) -> RerankerEmbeddings:
    """Realistic local embeddings (the default bi-encoder)."""
    return RerankerEmbeddings(default_reranker)


@pytest.fixture
def corpus() -> list[Document]:
    """Five short documents on unrelated topics, with ids and metadata."""
    return [doc.model_copy(deep=True) for doc in CORPUS]


@pytest.fixture
def vector_store(embeddings: RerankerEmbeddings, corpus: list[Document]) -> InMemoryVectorStore:
    """An in-memory vector store holding the corpus."""
    store = InMemoryVectorStore(embedding=embeddings)
    store.add_documents(corpus)
    return store


@pytest.fixture(scope="session")
def saved_model_dir(tiny_bi_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory written by GumbelReranker.save_pretrained (what `gumbel-rag train` produces)."""
    out = tmp_path_factory.mktemp("langchain-gumbel-saved")
    GumbelReranker.from_pretrained(tiny_bi_encoder_dir, device="cpu").save_pretrained(out)
    return out
