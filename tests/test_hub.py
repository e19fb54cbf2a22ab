"""Models from the hub, the Hugging Face way, against a local stand-in for the hub (no outside network).

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import, so each scenario runs in a fresh
Python process with its own environment; the stand-in server runs in this process and records every
request it gets. Downloads, the cache layout and the error mapping are all huggingface_hub's own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gumbel_rag.testing import build_tiny_bi_encoder, build_tiny_cross_encoder, build_tiny_reader

_spec = importlib.util.spec_from_file_location("hub_stand_in", Path(__file__).with_name("hub_stand_in.py"))
assert _spec is not None and _spec.loader is not None
hub_stand_in = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hub_stand_in)

QUERY = "where is the cat"
DOCS = ["the cat sat on the mat", "paris is in france", ""]


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-repos")
    bi = build_tiny_bi_encoder(root / "bi" / "model")
    cross = build_tiny_cross_encoder(root / "cross")
    reader = build_tiny_reader(root / "reader" / "model")
    # Only what a hub repository holds: no stray build folders next to the model.
    return {"tiny-org/tiny-bi": bi, "tiny-org/tiny-cross": cross, "tiny-org/tiny-reader": reader}


def _run(script: str, env: dict[str, str], timeout: float = 300) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; it prints one JSON object on its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env(tmp_path: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="20",
        TOKENIZERS_PARALLELISM="false",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def test_hub_names_download_cache_and_go_offline(repos: dict[str, Path], tmp_path: Path) -> None:
    from gumbel_rag import GumbelReranker

    expected = GumbelReranker.from_pretrained(repos["tiny-org/tiny-bi"], device="cpu").score(QUERY, DOCS)
    custom = tmp_path / "custom-cache"
    documents = tmp_path / "docs.jsonl"
    documents.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf8")
    with hub_stand_in.HubStandIn(repos, gated=("gated-org/tiny",)) as hub:
        online = _run(
            f"""
            import contextlib, io, json
            from gumbel_rag import GumbelReranker, cli
            from gumbel_rag.errors import ModelLoadError
            from gumbel_rag.readers import load_reader

            def error(name, **kwargs):
                try:
                    GumbelReranker.from_pretrained(name, **kwargs)
                except ModelLoadError as exc:
                    return str(exc)

            out = {{}}
            bi = GumbelReranker.from_pretrained("tiny-org/tiny-bi", device="cpu")
            out["kind"], out["scores"] = bi.kind, bi.score({QUERY!r}, {DOCS!r})
            cross = GumbelReranker.from_pretrained(
                "tiny-org/tiny-cross", revision="v2", token="hf_secret", cache_folder={str(custom)!r}
            )
            out["cross_kind"] = cross.kind
            reader = load_reader("tiny-org/tiny-reader", device="cpu", revision="r1", token="hf_reader")
            out["reader"] = type(reader).__name__
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                code = cli.main(["rerank", "--query", "cat", "--documents", {str(documents)!r},
                                 "--model", "tiny-org/tiny-bi", "--revision", "cli-rev", "--token", "hf_cli"])
            out["cli"] = [code, len(json.loads(buffer.getvalue()))]
            out["missing"] = error("tiny-org/nope")
            out["gated"] = error("gated-org/tiny")
            out["local_only"] = error("tiny-org/tiny-cross", local_files_only=True)
            print(json.dumps(out))
            """,
            _env(tmp_path, hub.url),
        )
        seen_online = list(hub.requests)
        offline = _run(
            f"""
            import json
            from gumbel_rag import GumbelReranker
            from gumbel_rag.errors import ModelLoadError

            out = {{}}
            out["scores"] = GumbelReranker.from_pretrained("tiny-org/tiny-bi", device="cpu").score(
                {QUERY!r}, {DOCS!r}
            )
            try:
                GumbelReranker.from_pretrained("tiny-org/tiny-cross")  # only in the custom cache
            except ModelLoadError as exc:
                out["uncached"] = str(exc)
            print(json.dumps(out))
            """,
            _env(tmp_path, hub.url, offline=True),
        )
        assert hub.requests == seen_online  # offline: not one request reached the hub

    # Downloaded into the standard cache layout, under HF_HOME, through huggingface_hub.
    assert online["kind"] == "bi-encoder" and online["cross_kind"] == "cross-encoder"
    assert online["scores"] == pytest.approx(expected, rel=1e-5)
    snapshots = tmp_path / "hf-home" / "hub" / "models--tiny-org--tiny-bi" / "snapshots"
    assert list(snapshots.glob("*/model.safetensors")) and list(snapshots.glob("*/modules.json"))
    # revision, token and cache_folder pass through to every download.
    assert list((custom / "models--tiny-org--tiny-cross").glob("snapshots/*/model.safetensors"))

    def at(repo: str, revision: str) -> list[dict[str, Any]]:
        # Asked by the revision's name, or by the commit the hub resolved it to (sentence-transformers).
        names = (
            f"/resolve/{revision}/",
            f"/revision/{revision}",
            f"/tree/{revision}",
            hub.commit(repo, revision),
        )
        return [r for r in seen_online if repo in r["path"] and any(n in r["path"] for n in names)]

    cross_requests = [r for r in seen_online if "tiny-org/tiny-cross" in r["path"]]
    assert cross_requests and at("tiny-org/tiny-cross", "v2") == cross_requests
    # Every download carries the token (transformers lists a repo folder of chat templates without it).
    downloads = [r for r in cross_requests if "/resolve/" in r["path"]]
    assert downloads and all(r["auth"] == "Bearer hf_secret" for r in downloads)
    reader_requests = [r for r in seen_online if "tiny-org/tiny-reader" in r["path"]]
    assert online["reader"] == "DecoderReader"
    assert reader_requests and at("tiny-org/tiny-reader", "r1") == reader_requests
    assert all(r["auth"] == "Bearer hf_reader" for r in reader_requests if "/resolve/" in r["path"])
    assert online["cli"] == [0, 3]
    cli_requests = at("tiny-org/tiny-bi", "cli-rev")
    assert cli_requests and all(
        r["auth"] == "Bearer hf_cli" for r in cli_requests if "/resolve/" in r["path"]
    )
    # One line each, naming the model and what was tried.
    assert "'tiny-org/nope' was not found on the Hugging Face Hub" in online["missing"]
    assert "'gated-org/tiny' is gated" in online["gated"] and "token" in online["gated"]
    assert "'tiny-org/tiny-cross'" in online["local_only"] and "local_files_only=True" in online["local_only"]
    # Offline: the cached model loads, with the same scores; an uncached one names the flag.
    assert offline["scores"] == pytest.approx(expected, rel=1e-5)
    assert "downloads are off (HF_HUB_OFFLINE=1)" in offline["uncached"]
    for message in (online["missing"], online["gated"], online["local_only"], offline["uncached"]):
        assert "\n" not in message


def test_no_network_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = _run(
        """
        import json
        from gumbel_rag import GumbelReranker
        from gumbel_rag.errors import ModelLoadError
        try:
            GumbelReranker.from_pretrained("tiny-org/unreachable")
        except ModelLoadError as exc:
            print(json.dumps({"error": str(exc)}))
        """,
        _env(tmp_path, f"http://127.0.0.1:{port}"),
    )
    assert out["error"].startswith(f"could not reach the Hugging Face Hub (http://127.0.0.1:{port})")
    assert "'tiny-org/unreachable'" in out["error"] and "\n" not in out["error"]


def test_packaged_default_needs_no_network(tmp_path: Path) -> None:
    # An endpoint that cannot be reached and no cache: the default still loads (it ships as a package).
    out = _run(
        """
        import json
        from gumbel_rag import GumbelReranker
        print(json.dumps({"kind": GumbelReranker.from_pretrained(device="cpu").kind}))
        """,
        _env(tmp_path, "http://127.0.0.1:9"),
    )
    assert out == {"kind": "bi-encoder"}
    assert not (tmp_path / "hf-home" / "hub").exists() or not any((tmp_path / "hf-home" / "hub").iterdir())
