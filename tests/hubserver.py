"""A Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1, serving folders as model repos.

It speaks the parts of the Hub API that huggingface_hub's real client uses for reading:

* ``GET /api/models`` with ``filter`` (tags, incl. ``base_model:finetune:BASE``), ``author``,
  ``search``, ``pipeline_tag``, ``sort``, ``direction``, ``limit``, ``expand[]``;
* ``GET /api/models/{id}`` and ``/api/models/{id}/revision/{rev}`` (sha, siblings, cardData,
  config, tags, pipeline_tag, downloads, likes, private, gated, createdAt);
* ``GET /api/models/{id}/tree/{rev}``;
* ``HEAD``/``GET /{id}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``,
  ``Content-Length`` and byte ranges;
* the Hub's errors: 401 with ``X-Error-Code: RepoNotFound`` for unknown or private repos without
  the right token, 401 ``GatedRepo`` for gated repos, 404 ``RevisionNotFound`` / ``EntryNotFound``.

Repos are folders ``ROOT/ORG/NAME``; a ``.hub.json`` in a repo sets ``downloads``, ``likes``,
``private``, ``gated``, ``createdAt`` and extra ``tags``. A repo's commit sha is the sha1 of its
file names and contents, so a changed file is a new commit. Every request is logged in
``server.log`` (method, path, range) so tests can assert what was (not) downloaded.

Example:
    >>> with HubServer(root) as hub:
    ...     os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import yaml

TOKEN = "hf_test_token_0123456789abcdef"  # the only token the server accepts for private repos


def _card(folder: Path) -> dict:
    readme = folder / "README.md"
    if not readme.exists():
        return {}
    text = readme.read_text(encoding="utf-8")
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    return (yaml.safe_load(m.group(1)) or {}) if m else {}


class Repo:
    def __init__(self, root: Path, repo_id: str):
        self.id = repo_id
        self.path = root / repo_id
        meta_file = self.path / ".hub.json"
        self.meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    @property
    def sha(self) -> str:
        h = hashlib.sha1()
        for f in self.files():
            h.update(f.encode())
            h.update(hashlib.sha256((self.path / f).read_bytes()).digest())
        return h.hexdigest()

    def card(self) -> dict:
        return _card(self.path)

    def config(self) -> dict:
        p = self.path / "config.json"
        try:
            return json.loads(p.read_text()) if p.exists() else {}
        except json.JSONDecodeError:
            return {}

    def tags(self) -> list[str]:
        card = self.card()
        tags = list(card.get("tags") or []) + list(self.meta.get("tags", []))
        base = card.get("base_model")
        rel = card.get("base_model_relation") or ("merge" if isinstance(base, list) and len(base) > 1 else "finetune")
        for b in ([base] if isinstance(base, str) else (base or [])):
            tags.append(f"base_model:{b}")
            tags.append(f"base_model:{rel}:{b}")
        if card.get("pipeline_tag"):
            tags.append(card["pipeline_tag"])
        if any(f.endswith(".safetensors") for f in self.files()):
            tags.append("safetensors")
        if self.config().get("model_type"):
            tags.append(self.config()["model_type"])
        return tags

    def info(self, expand: list[str] | None = None) -> dict:
        card = self.card()
        d = {
            "_id": hashlib.md5(self.id.encode()).hexdigest()[:24],
            "id": self.id,
            "modelId": self.id,
            "author": self.id.split("/")[0],
            "sha": self.sha,
            "private": bool(self.meta.get("private")),
            "gated": self.meta.get("gated", False),
            "disabled": False,
            "downloads": self.meta.get("downloads", 0),
            "likes": self.meta.get("likes", 0),
            "tags": self.tags(),
            "pipeline_tag": card.get("pipeline_tag"),
            "library_name": card.get("library_name"),
            "createdAt": self.meta.get("createdAt", "2025-01-01T00:00:00.000Z"),
            "lastModified": self.meta.get("lastModified", "2025-06-01T00:00:00.000Z"),
            "cardData": card,
            "config": {k: v for k, v in self.config().items() if k in ("architectures", "model_type")},
            "siblings": [{"rfilename": f} for f in self.files()],
        }
        if expand:
            d = {k: v for k, v in d.items() if k in set(expand) | {"_id", "id", "modelId"}}
        return d


class _Handler(BaseHTTPRequestHandler):
    server: "HubServer._Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output clean
        pass

    # -- helpers --------------------------------------------------------------------------------
    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, code: int, obj, head: bool = False):
        self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

    def _error(self, code: int, err: str, msg: str, head: bool = False):
        self._send(code, json.dumps({"error": msg}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": err, "X-Error-Message": msg}, head)

    def _authorized(self, repo: Repo) -> bool:
        if not repo.meta.get("private") and not repo.meta.get("gated"):
            return True
        return self.headers.get("Authorization", "") == f"Bearer {TOKEN}"

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        root: Path = self.server.root
        if repo_id.count("/") != 1 or not (root / repo_id).is_dir():
            self._error(401, "RepoNotFound", "Repository not found", head)
            return None
        repo = Repo(root, repo_id)
        if repo.meta.get("private") and not self._authorized(repo):
            self._error(401, "RepoNotFound", "Repository not found", head)
            return None
        return repo

    def _check_rev(self, repo: Repo, rev: str, head: bool = False) -> bool:
        if rev in ("main", repo.sha) or (len(rev) >= 7 and repo.sha.startswith(rev)):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        return False

    # -- routes ---------------------------------------------------------------------------------
    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head: bool):
        url = urlparse(self.path)
        path = unquote(url.path)
        self.server.log.append((self.command, path, self.headers.get("Range")))
        q = parse_qs(url.query)
        if path == "/api/models":
            return self._list(q, head)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            repo = self._repo(m.group(1), head)
            if repo is None:
                return
            if repo.meta.get("gated") and not self._authorized(repo):
                pass  # model_info of a gated repo is public; files are not
            if m.group(2) and not self._check_rev(repo, m.group(2), head):
                return
            return self._json(200, repo.info(q.get("expand") or q.get("expand[]")), head)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m:
            repo = self._repo(m.group(1), head)
            if repo is None or not self._check_rev(repo, m.group(2), head):
                return
            return self._json(200, [{"type": "file", "path": f, "size": (repo.path / f).stat().st_size,
                                     "oid": hashlib.sha1((repo.path / f).read_bytes()).hexdigest()}
                                    for f in repo.files()], head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._file(m.group(1), m.group(2), m.group(3), head)
        self._error(404, "EntryNotFound", f"no route {path}", head)

    def _list(self, q: dict, head: bool):
        root: Path = self.server.root
        repos = [Repo(root, f"{o.name}/{r.name}") for o in sorted(root.iterdir()) if o.is_dir()
                 for r in sorted(o.iterdir()) if r.is_dir()]
        repos = [r for r in repos if not r.meta.get("private") or self._authorized(r)]
        for f in q.get("filter", []):
            repos = [r for r in repos if f in r.tags()]
        for a in q.get("author", []):
            repos = [r for r in repos if r.id.split("/")[0] == a]
        for s in q.get("search", []):
            repos = [r for r in repos if s.lower() in r.id.lower()]
        for p in q.get("pipeline_tag", []):
            repos = [r for r in repos if r.card().get("pipeline_tag") == p]
        sort = (q.get("sort") or [None])[0]
        if sort in ("downloads", "likes"):
            repos.sort(key=lambda r: r.meta.get(sort, 0), reverse=True)
        limit = int((q.get("limit") or [1000])[0])
        expand = q.get("expand") or q.get("expand[]")
        self._json(200, [r.info(expand) for r in repos[:limit]], head)

    def _file(self, repo_id: str, rev: str, fname: str, head: bool):
        repo = self._repo(repo_id, head)
        if repo is None or not self._check_rev(repo, rev, head):
            return
        if repo.meta.get("gated") and not self._authorized(repo):
            return self._error(401, "GatedRepo", "Access to this model is restricted", head)
        if fname in repo.meta.get("missing", []):
            return self._error(404, "EntryNotFound", f"{fname} does not exist", head)
        fpath = repo.path / fname
        if not fpath.is_file() or fname.startswith("."):
            return self._error(404, "EntryNotFound", f"{fname} does not exist", head)
        data = fpath.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
        headers = {"X-Repo-Commit": repo.sha, "ETag": etag, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        rng = self.headers.get("Range")
        if rng and not head:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
                part = data[start : end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send(206, part, headers)
        headers["Content-Length"] = len(data)
        if head:
            return self._send(200, b"", headers, head=True)
        self.server.downloads.append((repo_id, fname))
        self._send(200, data, headers)


class HubServer:
    """Serve ``root`` on a free loopback port for the duration of a ``with`` block."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        root: Path
        log: list
        downloads: list

    def __init__(self, root: Path):
        self.httpd = self._Server(("127.0.0.1", 0), _Handler)
        self.httpd.root = Path(root)
        self.httpd.log = []
        self.httpd.downloads = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def log(self) -> list:
        return self.httpd.log

    def full_downloads(self) -> list[tuple[str, str]]:
        """(repo, file) for every whole-file GET (HEADs and range reads are not downloads)."""
        return [(m, f) for m, f in self.httpd.downloads]

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
