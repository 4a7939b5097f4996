"""A Hugging Face Hub stand-in on loopback, for tests: the endpoints huggingface_hub
calls to resolve a revision, list a commit's files and download them (HEAD and GET,
with ranges), for models and datasets, public, gated or missing; and to publish
(create a repository, preupload, commit — every file sent inline, as the Hub asks
of small files). Repositories are
dicts of file name → bytes per commit; a branch points at a commit and can be moved.
Every request is recorded, so a test can count downloads. Point HF_ENDPOINT at `url`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

TOKEN = "hf_test_token"  # noqa: S105 (the stand-in's one valid token)


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 (git's id)


@dataclass
class Repo:
    kind: str  # "model" or "dataset"
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        """Add a commit holding `files` and move `branch` to it; return its id."""
        blob = json.dumps({k: git_oid(v) for k, v in sorted(files.items())}).encode()
        sha = hashlib.sha1(blob + str(len(self.commits)).encode()).hexdigest()  # noqa: S324
        self.commits[sha] = dict(files)
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.branches.get(revision)


class HubStub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, kind: str = "model", gated: bool = False) -> Repo:
        repo = self.repos[(kind, repo_id)] = Repo(kind, gated=gated)
        return repo

    def downloads(self) -> list[str]:
        """The file contents served (GET of /resolve/), as paths."""
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def do_POST(self) -> None:
                path = unquote(urlparse(self.path).path)
                stub.requests.append(("POST", path))
                payload = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
                    return
                if path == "/api/validate-yaml":  # a model card's metadata: accepted
                    self._send(200, b"{}", {"Content-Type": "application/json"})
                    return
                if path == "/api/repos/create":
                    spec = json.loads(payload)
                    repo_id = f"{spec.get('organization') or 'me'}/{spec['name']}"
                    kind = spec.get("type") or "model"
                    if (kind, repo_id) not in stub.repos:
                        private = spec.get("private") or spec.get("visibility") == "private"
                        stub.add(repo_id, kind).private = bool(private)
                    url = f"{stub.url}/{repo_id}"
                    self._send(200, json.dumps({"url": url, "name": repo_id}).encode(), {})
                    return
                action = re.fullmatch(
                    r"/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path
                )
                if not action:
                    self._error(404, "EntryNotFound", f"no route {path}")
                    return
                repo = stub.repos.get((action.group(1)[:-1], action.group(2)))
                if repo is None:
                    self._error(404, "RepoNotFound", f"Repository {action.group(2)} not found")
                    return
                if action.group(3) == "preupload":
                    files = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in json.loads(payload)["files"]
                    ]
                    self._send(200, json.dumps({"files": files}).encode(), {})
                    return
                branch = action.group(4)
                files = dict(repo.commits.get(repo.branches.get(branch, ""), {}))
                for line in payload.decode().splitlines():
                    entry = json.loads(line)
                    if entry["key"] == "file":
                        files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                sha = repo.commit(files, branch)
                body = {"commitOid": sha, "commitUrl": f"{stub.url}/{action.group(2)}/commit/{sha}"}
                self._send(200, json.dumps(body).encode(), {})

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                stub.requests.append((self.command, path))
                api = re.fullmatch(
                    r"/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?",
                    path,
                )
                resolve = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if path == "/api/agent-harnesses":  # huggingface_hub's agent registry
                    body = json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()
                    self._send(200, body, {"Content-Type": "application/json"})
                elif api:
                    kind = api.group(1)[:-1]
                    what, revision = api.group(3) or "revision", api.group(4) or "main"
                    self._api(kind, api.group(2), what, revision)
                elif resolve:
                    kind = "dataset" if resolve.group(1) else "model"
                    self._file(kind, resolve.group(2), resolve.group(3), resolve.group(4), body)
                else:
                    self._error(404, "EntryNotFound", f"no route {path}")

            def _repo(self, kind: str, repo_id: str, revision: str) -> tuple[Repo, str] | None:
                repo = stub.repos.get((kind, repo_id))
                if repo is None:
                    self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                    return None
                if repo.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._error(
                        403,
                        "GatedRepo",
                        f"Access to model {repo_id} is restricted: you are not in the "
                        "authorized list",
                    )
                    return None
                sha = repo.resolve(revision)
                if sha is None:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return None
                return repo, sha

            def _api(self, kind: str, repo_id: str, what: str, revision: str) -> None:
                found = self._repo(kind, repo_id, revision)
                if found is None:
                    return
                repo, sha = found
                files = repo.commits[sha]
                if what == "revision":
                    payload: object = {
                        "id": repo_id,
                        "sha": sha,
                        "private": False,
                        "gated": "manual" if repo.gated else False,
                        "siblings": [{"rfilename": name} for name in sorted(files)],
                    }
                else:
                    payload = [
                        {"type": "file", "path": name, "size": len(data), "oid": git_oid(data)}
                        for name, data in sorted(files.items())
                    ]
                self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

            def _file(self, kind: str, repo_id: str, revision: str, name: str, body: bool) -> None:
                found = self._repo(kind, repo_id, revision)
                if found is None:
                    return
                repo, sha = found
                data = repo.commits[sha].get(name)
                if data is None:
                    self._error(404, "EntryNotFound", f"{name} not in {repo_id}@{revision}")
                    return
                headers = {"X-Repo-Commit": sha, "ETag": f'"{git_oid(data)}"'}
                status, part = 200, data
                ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if ranged:
                    start = int(ranged.group(1))
                    end = int(ranged.group(2)) if ranged.group(2) else len(data) - 1
                    status, part = 206, data[start : end + 1]
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                self._send(status, part if body else b"", headers, length=len(part))

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message})

            def _send(
                self, status: int, body: bytes, headers: dict, length: int | None = None
            ) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        return Handler
