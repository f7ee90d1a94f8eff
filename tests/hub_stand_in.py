"""A local stand-in of the Hugging Face Hub, just enough for `HfApi.create_repo`, `create_branch` and `create_commit`
with small files (huggingface_hub 2.x routes and JSON shapes, read from hf_api.py and _commit_api.py):

    POST /api/repos/create                          {"name", "organization", "visibility"?} -> {"url", "name"}
    GET  /api/whoami-v2                             -> {"name": "user", "type": "user"}
    GET  /api/agent-harnesses                       -> an empty registry (the client's user-agent detection)
    GET  /api/models/{ns}/{name}[/revision/{rev}]   -> {"id", "sha", "private"}   (create_repo's exist_ok fallback)
    POST /api/models/{ns}/{name}/branch/{branch}    {"startingPoint"?} -> {}     (409 when it exists)
    POST /api/models/{ns}/{name}/preupload/{rev}    {"files": [{path, sample, size}]}
                                                    -> {"files": [{path, "uploadMode": "regular", "shouldIgnore", oid}]}
    POST /api/validate-yaml                         {"content", "repoType"} -> {"errors": [], "warnings": []}
    POST /api/models/{ns}/{name}/commit/{rev}       NDJSON: header line, then one "file" line per file (base64)
                                                    -> {"commitUrl", "commitOid", "success"}

Every file is "regular" (contents inline in the commit), so no LFS or Xet transfer is involved. Repositories and
branches live in memory; `commits` lists every commit made. Any other route answers 404 and is listed in `unknown`.

Failures are injected per route name ("create", "branch", "preupload", "commit", "info", "validate-yaml"):
`fail(route, status, times=1)` answers `status` to the next `times` requests (times=None: to every request), and
`after_apply=True` makes a commit land before the error answer (a lost response).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

USER = "user"  # the stand-in's token owner: bare repository names go under this namespace

_REPO = r"/api/models/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create"),
    ("GET", re.compile(r"/api/whoami-v2"), "whoami"),
    ("GET", re.compile(r"/api/agent-harnesses"), "agent-harnesses"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate-yaml"),
    ("POST", re.compile(_REPO + r"/branch/(?P<rev>[^/]+)"), "branch"),
    ("POST", re.compile(_REPO + r"/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(_REPO + r"/commit/(?P<rev>[^/]+)"), "commit"),
    ("GET", re.compile(_REPO + r"(?:/revision/(?P<rev>[^/]+))?"), "info"),
]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Branch:
    files: dict[str, bytes] = field(default_factory=dict)
    head: str | None = None  # oid of the last commit, None while empty


@dataclass
class Repo:
    repo_id: str
    private: bool | None
    branches: dict[str, Branch] = field(default_factory=lambda: {"main": Branch()})


@dataclass
class Failure:
    status: int
    times: int | None  # None: forever
    after_apply: bool = False


class HubStandIn:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.commits: list[dict] = []  # {"repo_id", "revision", "oid", "summary", "files": {path: bytes}}
        self.requests: list[tuple[str, str]] = []  # (method, route name or raw path)
        self.auth: list[str | None] = []  # Authorization header of each request
        self.unknown: list[tuple[str, str]] = []
        self._failures: dict[str, Failure] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # ------------------------------------------------------------------------------------------------ control
    def start(self) -> "HubStandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail(self, route: str, status: int, times: int | None = 1, after_apply: bool = False) -> None:
        self._failures[route] = Failure(status, times, after_apply)

    def count(self, route: str) -> int:
        return sum(1 for _, r in self.requests if r == route)

    def commits_of(self, repo_id: str, revision: str | None = None) -> list[dict]:
        return [c for c in self.commits if c["repo_id"] == repo_id and (revision is None or c["revision"] == revision)]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].branches[revision].files)

    # ------------------------------------------------------------------------------------------------ server
    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload, headers: dict | None = None):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def _dispatch(self, method: str):
                body = self._body()
                path = urlsplit(self.path).path
                for m, pattern, name in _ROUTES:
                    match = pattern.fullmatch(path)
                    if m == method and match:
                        break
                else:
                    with hub._lock:
                        hub.requests.append((method, path))
                        hub.unknown.append((method, path))
                    return self._send(404, {"error": f"stand-in: no route {method} {path}"})
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                with hub._lock:
                    hub.requests.append((method, name))
                    hub.auth.append(self.headers.get("Authorization"))
                    failure = hub._failures.get(name)
                    if failure is not None:
                        if failure.times is not None:
                            failure.times -= 1
                            if failure.times <= 0:
                                del hub._failures[name]
                        if not failure.after_apply:
                            return self._send(failure.status, {"error": f"stand-in: injected {failure.status}"})
                    status, payload, headers = getattr(hub, "_" + name.replace("-", "_"))(params, body)
                    if failure is not None and failure.after_apply:
                        return self._send(failure.status, {"error": f"stand-in: injected {failure.status} (applied)"})
                return self._send(status, payload, headers)

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_DELETE(self):
                self._dispatch("DELETE")

        return Handler

    # ------------------------------------------------------------------------------------------------ routes
    # each returns (status, json payload, extra headers); called with the lock held

    def _not_found(self, repo_id):
        return 404, {"error": f"Repository {repo_id} not found"}, {"X-Error-Code": "RepoNotFound"}

    def _revision_not_found(self, rev):
        return 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}

    def _create(self, params, body):
        data = json.loads(body)
        repo_id = f"{data.get('organization') or USER}/{data['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}, {}
        visibility = data.get("visibility")
        self.repos[repo_id] = Repo(repo_id, None if visibility is None else visibility == "private")
        return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id}, {}

    def _agent_harnesses(self, params, body):
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def _whoami(self, params, body):
        return 200, {"name": USER, "type": "user", "orgs": []}, {}

    def _validate_yaml(self, params, body):
        return 200, {"errors": [], "warnings": []}, {}

    def _info(self, params, body):
        repo = self.repos.get(f"{params['ns']}/{params['name']}")
        if repo is None:
            return self._not_found(f"{params['ns']}/{params['name']}")
        branch = repo.branches.get(params.get("rev", "main"))
        if branch is None:
            return self._revision_not_found(params["rev"])
        return 200, {"id": repo.repo_id, "sha": branch.head, "private": bool(repo.private),
                     "siblings": [{"rfilename": p} for p in sorted(branch.files)]}, {}

    def _branch(self, params, body):
        repo = self.repos.get(f"{params['ns']}/{params['name']}")
        if repo is None:
            return self._not_found(f"{params['ns']}/{params['name']}")
        if params["rev"] in repo.branches:
            return 409, {"error": f"Reference already exists: refs/heads/{params['rev']}"}, {}
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        if start not in repo.branches:
            return self._revision_not_found(start)
        src = repo.branches[start]
        repo.branches[params["rev"]] = Branch(dict(src.files), src.head)
        return 200, {}, {}

    def _preupload(self, params, body):
        repo = self.repos.get(f"{params['ns']}/{params['name']}")
        if repo is None:
            return self._not_found(f"{params['ns']}/{params['name']}")
        branch = repo.branches.get(params["rev"])
        if branch is None:
            return self._revision_not_found(params["rev"])
        files = []
        for f in json.loads(body)["files"]:
            existing = branch.files.get(f["path"])
            files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": None if existing is None else git_blob_sha1(existing)})
        return 200, {"files": files, "commitOid": branch.head}, {}

    def _commit(self, params, body):
        repo = self.repos.get(f"{params['ns']}/{params['name']}")
        if repo is None:
            return self._not_found(f"{params['ns']}/{params['name']}")
        branch = repo.branches.get(params["rev"])
        if branch is None:
            return self._revision_not_found(params["rev"])
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            return 400, {"error": "commit payload must start with a header line with a summary"}, {}
        added = {}
        for line in lines[1:]:
            if line.get("key") != "file" or line["value"].get("encoding") != "base64":
                return 400, {"error": f"stand-in supports only inline base64 files, got {line.get('key')!r}"}, {}
            added[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        parent = branch.head or ""
        oid = hashlib.sha1(f"{parent}\n{repo.repo_id}\n{len(self.commits)}".encode()).hexdigest()
        branch.files.update(added)  # all or nothing: nothing above changed state
        branch.head = oid
        self.commits.append({"repo_id": repo.repo_id, "revision": params["rev"], "oid": oid,
                             "summary": lines[0]["value"]["summary"], "files": added})
        return 200, {"commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                     "success": True}, {}
