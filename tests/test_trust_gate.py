"""trust_remote_code: one gate, and no nested kwarg opens it (a real model folder whose code writes a file).

The folder is a working tiny BERT bi-encoder whose config.json has an ``auto_map`` pointing at Python
shipped with it; importing that Python writes a marker file. Nothing may import it unless
``trust_remote_code=True`` is the caller's own argument.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gumbel_rag import GumbelReranker
from gumbel_rag.errors import ConfigError
from gumbel_rag.testing import build_tiny_bi_encoder

CUSTOM_CODE = """
from pathlib import Path

Path({marker!r}).write_text("remote code ran")

from transformers import BertConfig, BertModel


class MarkerConfig(BertConfig):
    model_type = "bert"


class MarkerModel(BertModel):
    config_class = MarkerConfig
"""


@pytest.fixture()
def remote_code_model(tmp_path: Path) -> tuple[Path, Path]:
    """A model folder with custom code, and the marker path that code writes."""
    folder = build_tiny_bi_encoder(tmp_path / "model")
    marker = tmp_path / "MARKER"
    (folder / "marker_model.py").write_text(CUSTOM_CODE.format(marker=str(marker)), encoding="utf8")
    config = json.loads((folder / "config.json").read_text(encoding="utf8"))
    config["auto_map"] = {"AutoConfig": "marker_model.MarkerConfig", "AutoModel": "marker_model.MarkerModel"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf8")
    return folder, marker


@pytest.mark.parametrize("where", ["model_kwargs", "tokenizer_kwargs", "config_kwargs"])
def test_nested_trust_remote_code_is_refused(remote_code_model: tuple[Path, Path], where: str) -> None:
    folder, marker = remote_code_model
    with pytest.raises(
        ConfigError, match=rf"{where} sets trust_remote_code=True but trust_remote_code=False"
    ):
        GumbelReranker.from_pretrained(folder, **{where: {"trust_remote_code": True}})
    assert not marker.exists()
    # Saying the same thing twice is no conflict.
    GumbelReranker.from_pretrained(folder, **{where: {"trust_remote_code": False}})
    assert not marker.exists()


def test_without_trust_the_code_never_runs(remote_code_model: tuple[Path, Path], tmp_path: Path) -> None:
    from gumbel_rag import cli

    folder, marker = remote_code_model
    assert GumbelReranker.from_pretrained(folder).score("q", ["a"])
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "a"}) + "\n", encoding="utf8")
    assert cli.main(["rerank", "--query", "q", "--documents", str(docs), "--model", str(folder)]) == 0
    assert not marker.exists()


def test_integrations_refuse_nested_trust(remote_code_model: tuple[Path, Path]) -> None:
    from haystack import Pipeline
    from haystack_integrations.components.rankers.gumbel import GumbelRanker
    from langchain_gumbel import GumbelRerank as LangChainRerank
    from llama_index.postprocessor.gumbel_rerank import GumbelRerank as LlamaIndexRerank

    folder, marker = remote_code_model
    nested = {"trust_remote_code": True}
    with pytest.raises(ValueError, match="model_kwargs sets trust_remote_code=True"):
        LangChainRerank(model=str(folder), model_kwargs=nested)
    with pytest.raises(ValueError, match="model_kwargs sets trust_remote_code=True"):
        LlamaIndexRerank(model=str(folder), model_kwargs=nested)
    # A saved Haystack pipeline that says trust_remote_code: false cannot be opened by its model_kwargs.
    pipe = Pipeline()
    pipe.add_component("ranker", GumbelRanker(model=str(folder)))
    yaml_text = pipe.dumps()
    assert "trust_remote_code: false" in yaml_text and "model_kwargs: null" in yaml_text
    tampered = yaml_text.replace("model_kwargs: null", "model_kwargs:\n        trust_remote_code: true")
    assert tampered != yaml_text
    with pytest.raises(Exception, match="model_kwargs sets trust_remote_code=True") as info:
        Pipeline.loads(tampered)
    assert isinstance(info.value, ValueError) or isinstance(info.value.__cause__, ValueError)
    assert not marker.exists()


def test_trust_remote_code_true_runs_the_code(remote_code_model: tuple[Path, Path], tmp_path: Path) -> None:
    # The control: the folder really would run its code, so the tests above could fail.
    folder, marker = remote_code_model
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = f"""
        from gumbel_rag import GumbelReranker
        GumbelReranker.from_pretrained({str(folder)!r}, trust_remote_code=True)
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert marker.read_text() == "remote code ran", proc.stderr[-3000:]
