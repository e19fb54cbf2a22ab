"""One behaviour for the three integrations: the same options, validation, ranking, metadata and reloads.

Each test runs against LangChain's ``GumbelRerank``, LlamaIndex's ``GumbelRerank`` and Haystack's
``GumbelRanker`` (the real classes, over a tiny real model), through a small adapter that only speaks
each framework's document type. A behaviour that drifts in one of them fails here.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gumbel_rag import GumbelReranker
from gumbel_rag.serving_options import OPTION_NAMES, TRUNCATED_KEY

Item = tuple[str, str, dict[str, Any]]  # (id, text, metadata)
Ranked = list[tuple[str, float, dict[str, Any]]]  # (id, score, metadata) best first


class LangChain:
    name, top = "langchain", "top_n"

    def make(self, **options: Any) -> Any:
        from langchain_gumbel import GumbelRerank

        return GumbelRerank(**options)

    def docs(self, items: Sequence[Item]) -> list[Any]:
        from langchain_core.documents import Document

        return [Document(page_content=text, id=i, metadata=dict(meta)) for i, text, meta in items]

    def out(self, docs: Sequence[Any]) -> Ranked:
        return [
            (
                d.id,
                d.metadata["relevance_score"],
                {k: v for k, v in d.metadata.items() if k != "relevance_score"},
            )
            for d in docs
        ]

    def rank(self, component: Any, query: str, items: Sequence[Item]) -> Ranked:
        return self.out(component.compress_documents(self.docs(items), query))

    def arank(self, component: Any, query: str, items: Sequence[Item]) -> Ranked:
        return self.out(asyncio.run(component.acompress_documents(self.docs(items), query)))

    def loaded(self, component: Any) -> GumbelReranker | None:
        return component._lazy.loaded


class LlamaIndex:
    name, top = "llamaindex", "top_n"

    def make(self, **options: Any) -> Any:
        # No metadata header in the scored text, as in the other two by default.
        from llama_index.core.schema import MetadataMode
        from llama_index.postprocessor.gumbel_rerank import GumbelRerank

        return GumbelRerank(metadata_mode=MetadataMode.NONE, **options)

    def nodes(self, items: Sequence[Item]) -> list[Any]:
        from llama_index.core.schema import NodeWithScore, TextNode

        return [NodeWithScore(node=TextNode(text=t, id_=i, metadata=dict(m)), score=0.5) for i, t, m in items]

    def out(self, nodes: Sequence[Any]) -> Ranked:
        return [(n.node.node_id, n.score, dict(n.node.metadata)) for n in nodes]

    def rank(self, component: Any, query: str, items: Sequence[Item]) -> Ranked:
        return self.out(component.postprocess_nodes(self.nodes(items), query_str=query))

    def arank(self, component: Any, query: str, items: Sequence[Item]) -> Ranked:
        return self.out(asyncio.run(component.apostprocess_nodes(self.nodes(items), query_str=query)))

    def loaded(self, component: Any) -> GumbelReranker | None:
        return component._lazy.loaded


class Haystack:
    name, top = "haystack", "top_k"

    def make(self, **options: Any) -> Any:
        from haystack.utils import ComponentDevice
        from haystack_integrations.components.rankers.gumbel import GumbelRanker

        if "top_n" in options:
            options["top_k"] = options.pop("top_n")
        options.setdefault("top_k", 3)  # LangChain's and LlamaIndex's default, for the shared tests
        options.setdefault("scale_score", False)  # ditto (Haystack's own default is True)
        options.setdefault("batch_size", 32)
        if isinstance(options.get("device"), str):
            options["device"] = ComponentDevice.from_str(options["device"])
        return GumbelRanker(**options)

    def docs(self, items: Sequence[Item]) -> list[Any]:
        from haystack import Document

        return [Document(id=i, content=t, meta=dict(m)) for i, t, m in items]

    def out(self, result: dict[str, Any]) -> Ranked:
        return [(d.id, d.score, dict(d.meta)) for d in result["documents"]]

    def rank(self, component: Any, query: str, items: Sequence[Item]) -> Ranked:
        return self.out(component.run(query=query, documents=self.docs(items)))

    def arank(self, component: Any, query: str, items: Sequence[Item]) -> Ranked:
        return self.out(asyncio.run(component.run_async(query=query, documents=self.docs(items))))

    def loaded(self, component: Any) -> GumbelReranker | None:
        return component.reranker


ADAPTERS = [LangChain(), LlamaIndex(), Haystack()]


@pytest.fixture(params=ADAPTERS, ids=lambda a: a.name)
def fw(request: pytest.FixtureRequest) -> Any:
    return request.param


def spelt(fw: Any, name: str) -> str:
    return fw.top if name == "top_n" else name


ITEMS: list[Item] = [
    ("berlin", "Berlin is the capital of Germany.", {"title": "Berlin", "n": 1, "nested": {"a": [1]}}),
    ("paris", "Paris is the capital of France.", {"title": "Paris", "n": 2}),
    ("nile", "The Nile is a river in Africa.", {"n": 3}),
    ("banana", "Bananas are yellow.", {}),
    ("empty", "", {"note": "no text"}),
]
QUERY = "capital of France"


@pytest.fixture(scope="module")
def core(tiny_bi_encoder_dir: Path) -> GumbelReranker:
    return GumbelReranker.from_pretrained(tiny_bi_encoder_dir, device="cpu")


# ----------------------------------------------------------------------------- the same options


def test_every_integration_takes_every_serving_option(fw: Any) -> None:
    if fw.name == "haystack":
        import inspect

        from haystack_integrations.components.rankers.gumbel import GumbelRanker

        names = set(inspect.signature(GumbelRanker.__init__).parameters)
    else:
        names = set(type(fw.make()).model_fields)
    assert {spelt(fw, n) for n in OPTION_NAMES} <= names


BAD_VALUES = [
    ("top_n", 0),
    ("top_n", -1),
    ("top_n", True),
    ("top_n", 2.5),
    ("score_threshold", float("nan")),
    ("score_threshold", float("inf")),
    ("score_threshold", True),
    ("batch_size", 0),
    ("batch_size", True),
    ("max_length", 0),
    ("cache_max_entries", 0),
    ("cache_max_bytes", True),
    ("kind", "colbert"),
    ("backend", "tensorrt"),
    ("trust_remote_code", "false"),
    ("local_files_only", 1),
]


@pytest.mark.parametrize(("option", "value"), BAD_VALUES, ids=lambda v: repr(v))
def test_bad_values_are_refused_at_construction_and_on_assignment(fw: Any, option: str, value: Any) -> None:
    label = spelt(fw, option)
    with pytest.raises(ValueError, match=rf"{label} must be"):
        fw.make(**{option: value})
    component = fw.make()
    before = getattr(component, label)
    with pytest.raises(ValueError, match=rf"{label} must be"):
        setattr(component, label, value)
    assert getattr(component, label) == before


@pytest.mark.parametrize("where", ["model_kwargs", "tokenizer_kwargs", "config_kwargs"])
def test_remote_code_cannot_be_turned_on_through_nested_kwargs(fw: Any, where: str) -> None:
    with pytest.raises(ValueError, match=rf"{where} sets trust_remote_code=True but trust_remote_code=False"):
        fw.make(**{where: {"trust_remote_code": True}})


def test_a_cache_on_a_cross_encoder_is_refused(fw: Any) -> None:
    with pytest.raises(ValueError, match="need a bi-encoder"):
        fw.make(kind="cross-encoder", cache_max_entries=10)


# ----------------------------------------------------------------------------- ranking


def test_scores_ordering_ties_and_metadata(fw: Any, tiny_bi_encoder_dir: Path, core: GumbelReranker) -> None:
    component = fw.make(model=tiny_bi_encoder_dir, device="cpu", top_n=None)
    items = [*ITEMS, ("berlin-2", ITEMS[0][1], {"copy": True})]  # the same text under another id
    out = fw.rank(component, QUERY, items)
    expected = core.score(QUERY, [text for _, text, _ in items])
    # Every document comes out once, with the core's score, best first; ties keep the input order.
    assert sorted(i for i, _, _ in out) == sorted(i for i, _, _ in items)
    by_id = {i: s for i, s, _ in out}
    for (doc_id, _, _), score in zip(items, expected, strict=True):
        assert by_id[doc_id] == pytest.approx(score, rel=1e-5)
    scores = [s for _, s, _ in out]
    assert scores == sorted(scores, reverse=True)
    ids = [i for i, _, _ in out]
    assert ids.index("berlin") < ids.index("berlin-2") and by_id["berlin"] == by_id["berlin-2"]
    metadata = {i: m for i, _, m in out}
    for doc_id, _, meta in items:
        assert metadata[doc_id] == meta  # kept as it was: nothing added for an untruncated document


def test_top_n_threshold_and_scale_score(fw: Any, tiny_bi_encoder_dir: Path, core: GumbelReranker) -> None:
    full = fw.rank(fw.make(model=tiny_bi_encoder_dir, device="cpu", top_n=None), QUERY, ITEMS)
    top2 = fw.rank(fw.make(model=tiny_bi_encoder_dir, device="cpu", top_n=2), QUERY, ITEMS)
    assert [i for i, _, _ in top2] == [i for i, _, _ in full[:2]]
    cut = full[2][1]  # a threshold equal to a score keeps it
    kept = fw.rank(
        fw.make(model=tiny_bi_encoder_dir, device="cpu", top_n=None, score_threshold=cut), QUERY, ITEMS
    )
    assert [i for i, _, _ in kept] == [i for i, _, _ in full[:3]]
    scaled = fw.rank(
        fw.make(model=tiny_bi_encoder_dir, device="cpu", top_n=None, scale_score=True), QUERY, ITEMS
    )
    assert [i for i, _, _ in scaled] == [i for i, _, _ in full]
    for (_, raw, _), (_, unit, _) in zip(full, scaled, strict=True):
        assert unit == pytest.approx((raw * core.temperature + 1) / 2, rel=1e-5)
        assert 0.0 <= unit <= 1.0


def test_empty_input_loads_nothing(fw: Any, tmp_path: Path) -> None:
    component = fw.make(model=str(tmp_path / "never-loaded"))
    assert fw.rank(component, QUERY, []) == []
    assert fw.arank(component, QUERY, []) == []
    assert fw.loaded(component) is None


def test_async_equals_sync(fw: Any, tiny_bi_encoder_dir: Path) -> None:
    component = fw.make(model=tiny_bi_encoder_dir, device="cpu", top_n=None)
    assert fw.arank(component, QUERY, ITEMS) == fw.rank(component, QUERY, ITEMS)


def test_truncation_is_reported_on_every_call(
    fw: Any, tiny_bi_encoder_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    component = fw.make(model=tiny_bi_encoder_dir, device="cpu", top_n=None, max_length=16)
    items = [("long", "word " * 100, {"k": 1}), ("longer", "word " * 200, {}), *ITEMS[:2]]
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gumbel_rag"):
            out = fw.rank(component, QUERY, items)
        lines = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
        assert lines == ["2 of 4 inputs exceed the model's limit of 16 tokens and were truncated"]
        metadata = {i: m for i, _, m in out}
        assert metadata["long"] == {"k": 1, TRUNCATED_KEY: True} and metadata["longer"] == {
            TRUNCATED_KEY: True
        }
        assert TRUNCATED_KEY not in metadata["berlin"]


# ----------------------------------------------------------------------------- loading


def test_reload_only_when_a_load_option_changes(
    fw: Any, tiny_bi_encoder_dir: Path, tiny_cross_encoder_dir: Path
) -> None:
    component = fw.make(model=tiny_bi_encoder_dir, device="cpu")
    fw.rank(component, QUERY, ITEMS)
    first = fw.loaded(component)
    assert first is not None
    component.batch_size = 7
    component.score_threshold = -100.0
    setattr(component, fw.top, 2)
    fw.rank(component, QUERY, ITEMS)
    assert fw.loaded(component) is first and first.batch_size == 7
    component.max_length = 32
    fw.rank(component, QUERY, ITEMS)
    assert fw.loaded(component) is not first and fw.loaded(component).max_length == 32
    component.model = str(tiny_cross_encoder_dir)
    fw.rank(component, QUERY, ITEMS)
    assert fw.loaded(component).kind == "cross-encoder"


def test_concurrent_calls_load_once_and_match_serial(
    fw: Any, tiny_bi_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Any] = []
    original = GumbelReranker.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: type[GumbelReranker], *args: Any, **kwargs: Any) -> GumbelReranker:
        loads.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(GumbelReranker, "from_pretrained", classmethod(counting))
    component = fw.make(model=tiny_bi_encoder_dir, device="cpu", top_n=None, batch_size=2)
    queries = [f"query {i} about {'France' if i % 2 else 'rivers'}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda q: fw.rank(component, q, ITEMS), queries))
    assert len(loads) == 1
    for query, got in zip(queries, threaded, strict=True):
        want = fw.rank(component, query, ITEMS)
        assert [i for i, _, _ in got] == [i for i, _, _ in want]
        assert [s for _, s, _ in got] == pytest.approx([s for _, s, _ in want], rel=1e-5)


def test_copies_share_the_loaded_model_until_they_change(fw: Any, tiny_bi_encoder_dir: Path) -> None:
    if fw.name == "haystack":
        pytest.skip("Haystack components are not copied with model_copy")
    component = fw.make(model=tiny_bi_encoder_dir, device="cpu")
    fw.rank(component, QUERY, ITEMS)
    loaded = fw.loaded(component)
    clone = component.model_copy(update={"top_n": 1})
    assert fw.loaded(clone) is loaded and len(fw.rank(clone, QUERY, ITEMS)) == 1
    clone.max_length = 8
    fw.rank(clone, QUERY, ITEMS)
    assert fw.loaded(clone) is not loaded and fw.loaded(component) is loaded  # the original keeps its own
    deep = copy.deepcopy(component)
    assert fw.rank(deep, QUERY, ITEMS) == fw.rank(component, QUERY, ITEMS)


def test_missing_model_is_one_line_naming_it(fw: Any, tmp_path: Path) -> None:
    from gumbel_rag.errors import ModelLoadError

    component = fw.make(model=str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="nope': no such directory") as info:
        fw.rank(component, QUERY, ITEMS)
    assert "\n" not in str(info.value)
