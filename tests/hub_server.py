"""A small Hugging Face Hub stand-in for tests: the HTTP API that the unmodified huggingface_hub uses.

Tests cannot reach the real Hub, so they start this server on 127.0.0.1 at a free port and point
``HF_ENDPOINT`` at it. It keeps model repos in memory with real commits: every commit gets a 40-hex
id and its own snapshot of the files, so old revisions stay readable. It answers:

    POST /api/repos/create                               create (409 with the url when it exists)
    POST /api/validate-yaml                              model card metadata (always valid)
    POST /api/models/{repo}/preupload/{rev}              uploadMode "regular" for every file (inline)
    POST /api/models/{repo}/commit/{rev}                 NDJSON: header, file (base64), deletedFile/Folder
    POST /api/models/{repo}/branch/{branch}              create a branch (409 when it exists)
    GET  /api/models/{repo}[/revision/{rev}]             repo info: sha, siblings, private
    GET  /api/models/{repo}/tree/{rev}[/{path}]          file listing (oid, size, path)
    HEAD|GET /{repo}/resolve/{rev}/{path}                content with X-Repo-Commit, ETag, Content-Length
    GET  /api/datasets?author=&search=                   dataset repos (minari's remote lists them)
    GET  /api/datasets/{repo}[/revision/{rev}|/tree/...] and HEAD|GET /datasets/{repo}/resolve/...:
                                                         the same answers for dataset repos (read only)

Writes need ``Authorization: Bearer <token>`` with the token the server was started with, and so do
reads of private repos; otherwise 401. Unknown repos, revisions and files get 404 with the
``X-Error-Code`` header (RepoNotFound, RevisionNotFound, EntryNotFound) that huggingface_hub maps to
its exceptions. Every request is recorded in ``requests``; ones this server does not know are also
in ``unknown`` (404), which is how to find out what a new client version asks for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.mp4 filter=lfs diff=lfs merge=lfs -text\n"
REPO_ID = r"[^/]+/[^/]+"
DATASET_KEY = "datasets/"  # dataset repos live in the same table under this prefix


def blob_oid(content: bytes) -> str:
    """The git blob id of ``content`` (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    parent: str | None
    files: dict[str, bytes]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name, a full commit id or a unique prefix of one (7+ hex digits)."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            matches = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubState:
    """The repos and the request log; every method takes the lock."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._counter = 0

    # --- helpers the tests read ---------------------------------------------------------------

    def history(self, repo_id: str, branch: str = "main") -> list[str]:
        """Commit ids of ``branch``, newest first (the repo's initial commit included)."""
        with self.lock:
            repo = self.repos.get(repo_id)
            if repo is None or branch not in repo.branches:
                return []
            out, oid = [], repo.branches[branch]
            while oid is not None:
                out.append(oid)
                oid = repo.commits[oid].parent
            return out

    def uploads(self) -> int:
        """How many commits clients have made (repo creation's initial commits not counted)."""
        with self.lock:
            return sum(1 for method, path in self.requests if method == "POST" and "/commit/" in path)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            return dict(commit.files) if commit else {}

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False, dataset: bool = False) -> str:
        """Make a repo (a dataset repo with ``dataset``) with one commit of ``files`` without a client
        (for tests about reading); its commit id."""
        with self.lock:
            repo = Repo(repo_id=repo_id, private=private)
            initial = self.new_commit(repo, None, "initial commit", {".gitattributes": GITATTRIBUTES})
            commit = self.new_commit(repo, initial.oid, "add files", {".gitattributes": GITATTRIBUTES, **files})
            repo.branches["main"] = commit.oid
            self.repos[DATASET_KEY + repo_id if dataset else repo_id] = repo
            return commit.oid

    # --- mutations ----------------------------------------------------------------------------

    def new_commit(self, repo: Repo, parent: str | None, message: str, files: dict[str, bytes]) -> Commit:
        self._counter += 1
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_id}\n{parent}\n{message}\n{self._counter}\n{time.time_ns()}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{blob_oid(files[path])}\n".encode())
        commit = Commit(
            oid=digest.hexdigest(), message=message, parent=parent, files=dict(files),
            date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        )
        repo.commits[commit.oid] = commit
        return commit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # --- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", head: bool = False) -> None:
        """Queue the response; ``_flush`` writes it once the state lock is released."""
        self._pending = (status, body, headers or {}, content_type, head)

    def _flush(self) -> None:
        status, body, headers, content_type, head = self._pending
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), headers, head=head)

    def _error(self, error: HubError, head: bool = False) -> None:
        headers = {"X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._json(error.status, {"error": error.message}, headers, head=head)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.state.token}"

    def _require_auth(self) -> None:
        if not self._authorized():
            # The Hub's wording; huggingface_hub then keeps it a 401 instead of "repo not found".
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str | None, dataset: str | None = None) -> Repo:
        repo = self.state.repos.get(DATASET_KEY + dataset if dataset else repo_id)
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    # --- dispatch -----------------------------------------------------------------------------

    ROUTES = [
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", rf"/api/models/(?P<repo>{REPO_ID})/preupload/(?P<rev>.+)", "preupload"),
        ("POST", rf"/api/models/(?P<repo>{REPO_ID})/commit/(?P<rev>.+)", "commit"),
        ("POST", rf"/api/models/(?P<repo>{REPO_ID})/branch/(?P<branch>.+)", "create_branch"),
        ("GET", rf"/api/models/(?P<repo>{REPO_ID})/revision/(?P<rev>.+)", "repo_info"),
        ("GET", rf"/api/models/(?P<repo>{REPO_ID})/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("GET", rf"/api/models/(?P<repo>{REPO_ID})", "repo_info"),
        ("GET", rf"/(?P<repo>{REPO_ID})/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/(?P<repo>{REPO_ID})/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        # Dataset repos (what minari's remote reads): the same answers, kept apart from model repos.
        ("GET", r"/api/datasets", "list_datasets"),
        ("GET", rf"/api/datasets/(?P<dataset>{REPO_ID})/revision/(?P<rev>.+)", "repo_info"),
        ("GET", rf"/api/datasets/(?P<dataset>{REPO_ID})/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("GET", rf"/api/datasets/(?P<dataset>{REPO_ID})", "repo_info"),
        ("GET", rf"/datasets/(?P<dataset>{REPO_ID})/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/datasets/(?P<dataset>{REPO_ID})/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.state.lock:
            self.state.requests.append((method, url.path))
        body = self._body() if method == "POST" else b""
        for route_method, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, url.path)
            if route_method == method and match:
                try:
                    with self.state.lock:
                        getattr(self, "do_" + name)(match.groupdict(), query, body, method == "HEAD")
                except HubError as error:
                    self._error(error, head=method == "HEAD")
                except Exception as error:  # a malformed request or a bug here: answer, never hang
                    self._error(HubError(500, f"test Hub failed: {error!r}"), head=method == "HEAD")
                break
        else:
            with self.state.lock:
                self.state.unknown.append((method, self.path))
            self._error(HubError(404, f"Not served by the test Hub: {method} {url.path}"), head=method == "HEAD")
        self._flush()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # --- endpoints ----------------------------------------------------------------------------

    def do_create_repo(self, _: dict, query: dict, body: bytes, head: bool) -> None:
        self._require_auth()
        payload = json.loads(body or b"{}")
        if payload.get("type", "model") != "model":
            raise HubError(400, "The test Hub serves model repos only")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"{self.base}/{repo_id}"
        if repo_id in self.state.repos:
            self._json(409, {"error": "You already created this model repo", "url": url},
                       {"X-Error-Message": "You already created this model repo"})
            return
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id=repo_id, private=private)
        initial = self.state.new_commit(repo, None, "initial commit", {".gitattributes": GITATTRIBUTES})
        repo.branches["main"] = initial.oid
        self.state.repos[repo_id] = repo
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def do_validate_yaml(self, _: dict, query: dict, body: bytes, head: bool) -> None:
        self._json(200, {"errors": [], "warnings": []})

    def do_preupload(self, groups: dict, query: dict, body: bytes, head: bool) -> None:
        self._require_auth()
        repo = self._repo(groups["repo"])
        commit = self._commit(repo, groups["rev"])
        files = json.loads(body)["files"]
        self._json(200, {
            "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files],
            "commitOid": commit.oid,
        })

    def do_commit(self, groups: dict, query: dict, body: bytes, head: bool) -> None:
        self._require_auth()
        repo = self._repo(groups["repo"])
        branch = unquote(groups["rev"])
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head_oid = repo.branches[branch]
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and not head_oid.startswith(parent):
            raise HubError(412, f"A commit has happened since {parent}; {branch} is at {head_oid}")
        files = dict(repo.commits[head_oid].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:  # lfsFile needs an LFS store; preupload never asks for one
                raise HubError(400, f"The test Hub does not accept '{key}' operations")
        message = header.get("summary", "")
        if header.get("description"):
            message += "\n\n" + header["description"]
        commit = self.state.new_commit(repo, head_oid, message, files)
        repo.branches[branch] = commit.oid
        self._json(200, {
            "success": True, "commitOid": commit.oid, "commitUrl": f"{self.base}/{repo.repo_id}/commit/{commit.oid}",
            "pullRequestUrl": None,
        })

    def do_create_branch(self, groups: dict, query: dict, body: bytes, head: bool) -> None:
        self._require_auth()
        repo = self._repo(groups["repo"])
        branch = unquote(groups["branch"])
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: {branch}")
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        repo.branches[branch] = self._commit(repo, start).oid
        self._json(200, {})

    def do_repo_info(self, groups: dict, query: dict, body: bytes, head: bool) -> None:
        repo = self._repo(groups.get("repo"), groups.get("dataset"))
        commit = self._commit(repo, groups.get("rev") or "main")
        self._json(200, {
            "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": commit.oid, "private": repo.private, "gated": False, "disabled": False,
            "lastModified": commit.date, "tags": [], "library_name": None,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        })

    def do_list_datasets(self, groups: dict, query: dict, body: bytes, head: bool) -> None:
        author, search = query.get("author", ""), query.get("search", "")
        found = [key[len(DATASET_KEY):] for key, repo in self.state.repos.items()
                 if key.startswith(DATASET_KEY) and (not repo.private or self._authorized())]
        found = [repo_id for repo_id in found if (not author or repo_id.split("/")[0] == author)
                 and search in repo_id.split("/")[1]]
        self._json(200, [{"id": repo_id, "author": repo_id.split("/")[0], "private": False} for repo_id in sorted(found)])

    def do_tree(self, groups: dict, query: dict, body: bytes, head: bool) -> None:
        repo = self._repo(groups.get("repo"), groups.get("dataset"))
        commit = self._commit(repo, groups["rev"])
        prefix = (groups.get("path") or "").strip("/")
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        entries: dict[str, dict] = {}
        for path in sorted(commit.files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            if "/" in rest and not recursive:
                folder = (prefix + "/" if prefix else "") + rest.split("/")[0]
                entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
                continue
            if recursive:  # the real Hub lists the folders on the way as well
                parts = rest.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    folder = (prefix + "/" if prefix else "") + "/".join(parts[:depth])
                    entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
            content = commit.files[path]
            entries[path] = {"type": "file", "oid": blob_oid(content), "size": len(content), "path": path}
        if prefix and not entries:
            raise HubError(404, f"{prefix} does not exist on {groups['rev']}", "EntryNotFound")
        self._json(200, list(entries.values()))

    def do_resolve(self, groups: dict, query: dict, body: bytes, head: bool) -> None:
        repo = self._repo(groups.get("repo"), groups.get("dataset"))
        commit = self._commit(repo, groups["rev"])
        path = unquote(groups["path"])
        if path not in commit.files:
            error = HubError(404, "Entry not found", "EntryNotFound")
            self._error(error, head=head)
            return
        content = commit.files[path]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob_oid(content)}"', "Accept-Ranges": "bytes"}
        status, payload = 200, content
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and not head:
            start = int(match[1])
            end = int(match[2]) if match[2] else len(content) - 1
            payload = content[start:end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(payload) - 1}/{len(content)}"
        headers["Content-Length"] = str(len(payload))
        self._send(status, payload, headers, content_type="application/octet-stream", head=head)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState


class HubServer:
    """The test Hub on 127.0.0.1 at a free port; use as a context manager or start()/stop().

    ``url`` is what ``HF_ENDPOINT`` should be; ``token`` the one write token it accepts.
    """

    def __init__(self, token: str = "hf_test_write_token"):
        self.state = HubState(token)
        self.token = token
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def hub_env(hub: HubServer, home: Path, *, token: str | None = None, offline: bool = False) -> dict[str, str]:
    """The environment for an unmodified huggingface_hub client pointed at ``hub``, caching under ``home``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               RQL_CHECKPOINTS=str(home / "no-bundled-checkpoints"))
    if token:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env
