"""A small Hugging Face Hub server on 127.0.0.1 for tests: the endpoints `huggingface_hub` 2.4 calls.

It serves what the real client (not a mock) needs to create a repo, upload with the legacy LFS
protocol (``HF_HUB_DISABLE_XET=1``), commit, list and download:

create (``POST /api/repos/create``, 409 with the url if it exists), README metadata check
(``POST /api/validate-yaml``), ``model_info``/``repo_info`` (``GET /api/models/{repo}[/revision/{rev}]``:
sha, siblings, cardData), ``list_repo_tree`` (``GET /api/models/{repo}/tree/{rev}[/{path}]``), preupload
(``POST /api/models/{repo}/preupload/{rev}``: regular or LFS by .gitattributes pattern, size, binary
sample), LFS batch (``POST /{repo}.git/info/lfs/objects/batch``: a signed upload URL ``PUT /lfs-upload/{oid}``
that checks the sha256 and needs no auth, like S3, plus a verify URL), NDJSON commit
(``POST /api/models/{repo}/commit/{rev}``: inline base64 files, LFS pointers to uploaded objects only,
deletions, parentCommit), download (``HEAD/GET /{repo}/resolve/{rev}/{path}`` with ETag, X-Repo-Commit,
Content-Length, X-Linked-Etag/X-Linked-Size for LFS files) and the client's user-agent registry
(``GET /api/agent-harnesses``).

Authorisation follows the Hub: writes need a ``Bearer`` token whose user owns the namespace and has
the ``write`` role (401 without a valid token, 403 without the right), private repos are visible to
their owner only (404 ``RepoNotFound`` otherwise). Errors are JSON ``{"error": ...}`` with the
``X-Error-Code``/``X-Error-Message`` headers the client reads. Unknown routes answer 404 and are
recorded in :attr:`HubState.unhandled`, so a test can assert the client used nothing else.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from .hub_repos import Commit, HubState, Repo, StoredFile, git_blob_sha1, lfs_pointer

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.npz", "*.npy", "*.arrow", "*.zip", "*.model")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
SIGNING_KEY = b"hub-server-test-key"


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _sign(oid: str) -> str:
    return hmac.new(SIGNING_KEY, oid.encode(), hashlib.sha256).hexdigest()


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass made by HubServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet server
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _user(self, required: bool) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        token = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
        if not token:
            if required:
                raise HubError(401, "You must be authenticated to access this endpoint: no token was sent.")
            return None
        if token not in self.state.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.state.tokens[token]

    def _repo(self, repo_id: str, write: bool) -> Repo:
        user = self._user(required=write)
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and (user is None or user[0] != repo_id.split("/")[0])):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and (user[0] != repo_id.split("/")[0] or user[1] != "write"):
            raise HubError(403, f"You don't have the rights to write to {repo_id}: token of '{user[0]}' with "
                                f"role '{user[1]}'")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        with self.state.lock:
            self.state.requests.append((self.command, path))
        for method, pattern, handler in ROUTES:
            match = re.fullmatch(pattern, path)
            if method == self.command or (method == "GET" and self.command == "HEAD"):
                if match:
                    try:
                        body = self._body() if self.command in ("POST", "PUT") else b""
                        with self.state.lock:
                            handler(self, body, *[unquote(g) if g is not None else None for g in match.groups()])
                    except HubError as error:
                        headers = {"X-Error-Message": error.message, **error.headers}
                        if error.code:
                            headers["X-Error-Code"] = error.code
                        self._json(error.status, {"error": error.message}, headers)
                    except Exception as error:  # noqa: BLE001 - a server bug: answer 400 (no retries), record it
                        self.state.unhandled.append((self.command, f"{self.path}: {error!r}"))
                        self._json(400, {"error": f"test server error: {error!r}"})
                    return
        with self.state.lock:
            self.state.unhandled.append((self.command, self.path))
        self._json(404, {"error": f"no route for {self.command} {path}"})

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # ------------------------------------------------------------------ endpoints
    def agent_harnesses(self, body: bytes) -> None:
        self._json(200, {"standardEnvVars": [], "harnesses": {}})  # user-agent registry, fetched once a day

    def create_repo(self, body: bytes) -> None:
        user, role = self._user(required=True)
        payload = json.loads(body)
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        if payload.get("type", "model") != "model":
            raise HubError(400, "This test server only hosts model repos")
        if namespace != user or role != "write":
            raise HubError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        url = f"{self._base()}/{repo_id}"
        if repo_id in self.state.repos:
            message = "You already created this model repo"  # the Hub's 409 body carries the url
            return self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
        repo = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        repo.commits.append(Commit(hashlib.sha1(f"{repo_id}:init".encode()).hexdigest(), "initial commit",
                                   {".gitattributes": StoredFile(GITATTRIBUTES)}))
        self.state.repos[repo_id] = repo
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        errors = []
        if match is None:
            return self._json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            metadata = yaml.safe_load(match.group(1))
            if not isinstance(metadata, dict):
                errors.append({"message": "metadata must be a YAML mapping"})
            for entry in (metadata or {}).get("model-index", []):
                for result in entry.get("results", []):
                    if not {"task", "dataset", "metrics"} <= set(result):
                        errors.append({"message": f"model-index result {result} lacks task/dataset/metrics"})
        except yaml.YAMLError as error:
            errors.append({"message": f"invalid YAML: {error}"})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    def model_info(self, body: bytes, repo_id: str, revision: str = "main") -> None:
        repo = self._repo(repo_id, write=False)
        commit = self._commit(repo, revision)
        card = commit.files.get("README.md")
        match = re.match(r"^---\n(.*?)\n---\n", card.content.decode(), re.DOTALL) if card else None
        card_data = yaml.safe_load(match.group(1)) if match else None
        self._json(200, {
            "_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit.sha,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "library_name": (card_data or {}).get("library_name"), "tags": (card_data or {}).get("tags", []),
            "cardData": card_data, "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        })

    def tree(self, body: bytes, repo_id: str, revision: str, folder: str | None = None) -> None:
        commit = self._commit(self._repo(repo_id, write=False), revision)
        recursive = parse_qs(urlsplit(self.path).query).get("recursive", ["false"])[0].lower() in ("true", "1")
        prefix = f"{folder.strip('/')}/" if folder else ""
        entries, folders = [], set()
        for path, stored in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                folders.add(prefix + "/".join(rest[:depth]))
            if len(rest) > 1 and not recursive:
                continue
            entry = {"type": "file", "oid": stored.oid, "size": len(stored.content), "path": path}
            if stored.lfs_oid:
                entry["lfs"] = {"oid": stored.lfs_oid, "size": len(stored.content),
                                "pointerSize": len(lfs_pointer(stored.lfs_oid, len(stored.content)))}
            entries.append(entry)
        if prefix and not entries and not folders:
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        shown = [f for f in sorted(folders) if recursive or "/" not in f[len(prefix):]]
        self._json(200, [{"type": "directory", "oid": git_blob_sha1(f.encode()), "size": 0, "path": f}
                         for f in shown] + entries)

    def preupload(self, body: bytes, repo_id: str, revision: str) -> None:
        commit = self._commit(self._repo(repo_id, write=True), revision)
        files = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = (any(fnmatch.fnmatch(item["path"].rsplit("/", 1)[-1], p) for p in LFS_PATTERNS)
                   or item["size"] >= LFS_SIZE_THRESHOLD or b"\0" in sample)
            existing = commit.files.get(item["path"])
            remote_oid = (existing.lfs_oid if lfs else existing.oid) if existing else None
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": remote_oid})
        self._json(200, {"files": files, "commitOid": commit.sha})

    def lfs_batch(self, body: bytes, repo_id: str) -> None:
        self._repo(repo_id, write=True)
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise HubError(400, "only uploads are supported")
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.state.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self._base()}/lfs-upload/{item['oid']}?signature={_sign(item['oid'])}"},
                    "verify": {"href": f"{self._base()}/{repo_id}.git/info/lfs/objects/verify",
                               "header": {"Authorization": self.headers.get("Authorization", "")}},
                }
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def lfs_upload(self, body: bytes, oid: str) -> None:
        signature = parse_qs(urlsplit(self.path).query).get("signature", [""])[0]
        if not hmac.compare_digest(signature, _sign(oid)):
            raise HubError(403, "SignatureDoesNotMatch")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not hash to {oid}")
        self.state.lfs_objects[oid] = body
        self._send(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def lfs_verify(self, body: bytes, repo_id: str) -> None:
        self._repo(repo_id, write=True)
        item = json.loads(body)
        stored = self.state.lfs_objects.get(item["oid"])
        if stored is None or len(stored) != item["size"]:
            raise HubError(404, f"LFS object {item['oid']} of size {item['size']} was not uploaded")
        self._json(200, {"success": True})

    def commit(self, body: bytes, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, write=True)
        parent = self._commit(repo, revision)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != parent.sha:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]))
            elif line["key"] == "lfsFile":
                content = self.state.lfs_objects.get(value["oid"])
                if content is None:
                    raise HubError(400, f"Your push was rejected because an LFS pointer pointed to a file that does "
                                        f"not exist. For instance: {value['path']}")
                files[value["path"]] = StoredFile(content, value["oid"])
            elif line["key"] == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif line["key"] == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, f"unknown commit operation {line['key']}")
        sha = hashlib.sha1(f"{parent.sha}:{header['summary']}:{sorted((p, f.oid) for p, f in files.items())}"
                           .encode()).hexdigest()
        repo.commits.append(Commit(sha, header["summary"], files))
        self._json(200, {"success": True, "commitOid": sha, "commitUrl": f"{self._base()}/{repo_id}/commit/{sha}",
                         "commitMessage": header["summary"], "pullRequestUrl": None})

    def resolve(self, body: bytes, repo_id: str, revision: str, path: str) -> None:
        commit = self._commit(self._repo(repo_id, write=False), revision)
        stored = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "none"}
        if stored is None:
            raise HubError(404, "Entry not found", "EntryNotFound", headers)
        headers["ETag"] = f'"{stored.oid}"'
        if stored.lfs_oid:
            headers.update({"X-Linked-Etag": f'"{stored.lfs_oid}"', "X-Linked-Size": str(len(stored.content))})
        self._send(200, stored.content, headers, content_type="application/octet-stream")


_REPO = r"([^/]+/[^/]+?)"
ROUTES = [
    ("GET", r"/api/agent-harnesses", HubHandler.agent_harnesses),
    ("POST", r"/api/repos/create", HubHandler.create_repo),
    ("POST", r"/api/validate-yaml", HubHandler.validate_yaml),
    ("GET", rf"/api/models/{_REPO}/tree/([^/]+)(?:/(.+))?", HubHandler.tree),
    ("GET", rf"/api/models/{_REPO}/revision/([^/]+)", HubHandler.model_info),
    ("GET", rf"/api/models/{_REPO}", HubHandler.model_info),
    ("POST", rf"/api/models/{_REPO}/preupload/([^/]+)", HubHandler.preupload),
    ("POST", rf"/api/models/{_REPO}/commit/([^/]+)", HubHandler.commit),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", HubHandler.lfs_batch),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/verify", HubHandler.lfs_verify),
    ("PUT", r"/lfs-upload/([0-9a-f]{64})", HubHandler.lfs_upload),
    ("GET", rf"/{_REPO}/resolve/([^/]+)/(.+)", HubHandler.resolve),
]


class HubServer:
    """``with HubServer(tokens) as hub: hub.url`` — a threaded server on a free 127.0.0.1 port."""

    def __init__(self, tokens: dict[str, tuple[str, str]]) -> None:
        self.state = HubState(tokens=tokens)
        handler = type("BoundHubHandler", (HubHandler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def files(self, repo_id: str, revision: str = "main") -> dict[str, StoredFile]:
        """The files of a repo at a revision (what a clone would hold)."""
        return self.state.repos[repo_id].resolve(revision).files

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
