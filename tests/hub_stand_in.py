"""A local HTTP stand-in for the Hugging Face Hub: serves model folders as hub repositories.

It answers the requests huggingface_hub makes (``HEAD``/``GET /{repo}/resolve/{revision}/{file}``, and the
``/api/models/...`` metadata calls) with the headers the real hub sends (``X-Repo-Commit``, ``ETag``,
``X-Error-Code``), so downloads, the cache and the errors all go through huggingface_hub itself. Point
``HF_ENDPOINT`` at :attr:`HubStandIn.url` in a fresh process (huggingface_hub reads it at import).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


class HubStandIn:
    """Serves ``repos`` (repo id -> local folder); ``gated`` repo ids answer 401 GatedRepo."""

    def __init__(self, repos: dict[str, Path], gated: tuple[str, ...] = ()) -> None:
        self.repos = repos
        self.gated = gated
        self.requests: list[dict[str, Any]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                stand_in._answer(self, body=False)

            def do_GET(self) -> None:
                stand_in._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        """Start serving in a thread."""
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def commit(repo: str, revision: str) -> str:
        """The 40-hex commit id the stand-in reports for a repo at a revision (a commit id is itself)."""
        if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
            return revision
        return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()

    def _send(self, h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], data: bytes, body: bool):
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, body: bool) -> None:
        data = json.dumps({"error": code}).encode()
        self._send(h, status, {"X-Error-Code": code, "Content-Type": "application/json"}, data, body)

    def _repo_of(self, parts: list[str]) -> tuple[str | None, list[str]]:
        for n in (2, 1):
            repo = "/".join(parts[:n])
            if repo in self.repos or repo in self.gated:
                return repo, parts[n:]
        return None, parts

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path).strip("/")
        self.requests.append({"method": h.command, "path": path, "auth": h.headers.get("Authorization")})
        parts = path.split("/")
        api = parts[:2] == ["api", "models"]
        repo, rest = self._repo_of(parts[2:] if api else parts)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", body)
        if repo in self.gated:
            return self._error(h, 401, "GatedRepo", body)
        folder = self.repos[repo]
        if api:
            # model_info / list files: /api/models/{repo}[/revision/{rev}] or /tree/{rev}/...
            if rest and rest[0] == "tree":
                return self._error(h, 404, "EntryNotFound", body)
            revision = rest[1] if len(rest) > 1 and rest[0] == "revision" else "main"
            files = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file()]
            info = {
                "id": repo,
                "sha": self.commit(repo, revision),
                "siblings": [{"rfilename": f} for f in files],
            }
            return self._send(h, 200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)
        if len(rest) < 3 or rest[0] != "resolve":
            return self._error(h, 404, "EntryNotFound", body)
        revision, filename = rest[1], "/".join(rest[2:])
        file = folder / filename
        if not file.is_file():
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.commit(repo, revision)}
            return self._send(h, 404, headers, b"not found", body)
        data = file.read_bytes()
        headers = {
            "X-Repo-Commit": self.commit(repo, revision),
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(h, 200, headers, data, body)
