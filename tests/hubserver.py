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
    """A repo folder, or one of its pull requests (the main files overlaid with the PR's files)."""

    def __init__(self, root: Path, repo_id: str, pr: dict | None = None):
        self.id = repo_id
        self.path = root / repo_id
        self.pr = pr
        meta_file = self.path / ".hub.json"
        self.meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}

    def files(self) -> list[str]:
        main = {p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                if p.is_file() and not p.name.startswith(".")}
        if self.pr:
            main = (main | set(self.pr["files"])) - set(self.pr["deleted"])
        return sorted(main)

    def read(self, f: str) -> bytes:
        if self.pr and f in self.pr["files"]:
            return self.pr["files"][f]
        return (self.path / f).read_bytes()

    def has(self, f: str) -> bool:
        return f in self.files()

    @property
    def sha(self) -> str:
        h = hashlib.sha1()
        for f in self.files():
            h.update(f.encode())
            h.update(hashlib.sha256(self.read(f)).digest())
        return h.hexdigest()

    def card(self) -> dict:
        if not self.has("README.md"):
            return {}
        m = re.match(r"^---\n(.*?)\n---\n", self.read("README.md").decode("utf-8"), re.S)
        return (yaml.safe_load(m.group(1)) or {}) if m else {}

    def config(self) -> dict:
        try:
            return json.loads(self.read("config.json")) if self.has("config.json") else {}
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

    def _at(self, repo: Repo, rev: str, head: bool = False) -> Repo | None:
        """The repo at a revision: main, a pull request (refs/pr/N) or a commit sha of either."""
        if rev in ("main", repo.sha) or (len(rev) >= 7 and repo.sha.startswith(rev)):
            return repo
        prs = self.server.prs.get(repo.id, [])
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        for pr in prs:
            view = Repo(self.server.root, repo.id, pr)
            if (m and int(m.group(1)) == pr["num"]) or rev == view.sha:
                return view
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        return None

    def _check_rev(self, repo: Repo, rev: str, head: bool = False) -> bool:
        return self._at(repo, rev, head) is not None

    # -- routes ---------------------------------------------------------------------------------
    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head: bool):
        url = urlparse(self.path)
        # a revision like refs/pr/1 arrives percent-encoded: keep it one path segment
        path = unquote(re.sub(r"refs%2Fpr%2F", "refs\x00pr\x00", url.path, flags=re.I)).replace("/", "/")
        self.server.log.append((self.command, path, self.headers.get("Range")))
        q = parse_qs(url.query)
        if path == "/api/models":
            return self._list(q, head)
        m = re.fullmatch(r"/api/models/((?:[^/]+/)?[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            repo = self._repo(m.group(1), head)
            if repo is None:
                return
            flaky = self.server.flaky.setdefault(repo.id, int(repo.meta.get("flaky", 0)))
            if flaky > 0:  # a repo that answers 503 this many times first
                self.server.flaky[repo.id] -= 1
                return self._error(503, "ServiceUnavailable", "try again", head)
            if m.group(2):  # model_info of a gated repo is public; its files are not
                repo = self._at(repo, m.group(2).replace("\x00", "/"), head)
                if repo is None:
                    return
            return self._json(200, repo.info(q.get("expand") or q.get("expand[]")), head)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/discussions(?:/(\d+))?", path)
        if m:
            repo = self._repo(m.group(1), head)
            if repo is None:
                return
            prs = self.server.prs.get(repo.id, [])
            if m.group(2):
                pr = next((p for p in prs if p["num"] == int(m.group(2))), None)
                if pr is None:
                    return self._error(404, "EntryNotFound", "no such discussion", head)
                return self._json(200, self._discussion(repo, pr, details=True), head)
            items = [self._discussion(repo, p) for p in prs]
            if (q.get("status") or ["all"])[0] == "open":
                items = [d for d in items if d["status"] == "open"]
            return self._json(200, {"discussions": items, "count": len(items), "start": 0,
                                    "numItemsPerPage": 50}, head)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m:
            repo = self._repo(m.group(1), head)
            if repo is None or not self._check_rev(repo, m.group(2), head):
                return
            return self._json(200, [{"type": "file", "path": f, "size": len(repo.read(f)),
                                     "oid": hashlib.sha1(repo.read(f)).hexdigest()} for f in repo.files()], head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._file(m.group(1), m.group(2).replace("\x00", "/"), m.group(3), head)
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
        if repo is None:
            return
        repo = self._at(repo, rev, head)
        if repo is None:
            return
        if repo.meta.get("gated") and not self._authorized(repo):
            return self._error(401, "GatedRepo", "Access to this model is restricted", head)
        if fname in repo.meta.get("missing", []):
            return self._error(404, "EntryNotFound", f"{fname} does not exist", head)
        if not repo.has(fname) or fname.startswith("."):
            return self._error(404, "EntryNotFound", f"{fname} does not exist", head)
        data = repo.read(fname)
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


class _Writer:
    """POST routes: repo creation, preupload, commits (to main, to a PR, or opening a PR), comments."""

    @staticmethod
    def handle(h: _Handler):
        url = urlparse(h.path)
        path = unquote(re.sub(r"refs%2Fpr%2F", "refs\x00pr\x00", url.path, flags=re.I))
        q = parse_qs(url.query)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        h.server.log.append(("POST", path, None))
        if path == "/api/validate-yaml":  # the client checks a card's YAML before committing it
            return h._json(200, {"errors": [], "warnings": []})
        if h.headers.get("Authorization", "") != f"Bearer {TOKEN}":
            return h._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        root: Path = h.server.root
        if path == "/api/repos/create":
            d = json.loads(body)
            repo_id = f"{d['organization']}/{d['name']}" if d.get("organization") else d["name"]
            if "/" not in repo_id:
                repo_id = f"hfscan-bot/{repo_id}"
            if (root / repo_id).exists():
                return h._error(409, "RepoExists", "You already created this model repo")
            (root / repo_id).mkdir(parents=True)
            (root / repo_id / ".hub.json").write_text(json.dumps({"private": bool(d.get("private"))}))
            return h._json(200, {"url": f"{h.server.server_url}/{repo_id}", "name": repo_id})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path)
        if m:
            files = json.loads(body)["files"]
            return h._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                           for f in files]})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path)
        if m:
            return _Writer.commit(h, m.group(1), m.group(2).replace("\x00", "/"), body, q.get("create_pr") == ["1"])
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/discussions/(\d+)/comment", path)
        if m:
            pr = next((p for p in h.server.prs.get(m.group(1), []) if p["num"] == int(m.group(2))), None)
            if pr is None:
                return h._error(404, "EntryNotFound", "no such discussion")
            pr["comments"].append(json.loads(body)["comment"])
            return h._json(200, {"newMessage": _event(len(pr["comments"]), pr["comments"][-1])})
        h._error(404, "EntryNotFound", f"no route {path}")

    @staticmethod
    def commit(h: _Handler, repo_id: str, rev: str, body: bytes, create_pr: bool):
        import base64

        repo = h._repo(repo_id)
        if repo is None:
            return
        lines = [json.loads(l) for l in body.decode().splitlines() if l.strip()]
        header = next(l["value"] for l in lines if l["key"] == "header")
        adds = {l["value"]["path"]: base64.b64decode(l["value"]["content"]) for l in lines if l["key"] == "file"}
        dels = [l["value"]["path"] for l in lines if l["key"] in ("deletedFile", "deletedFolder")]
        if any(l["key"] == "lfsFile" for l in lines):
            return h._error(400, "BadRequest", "this test server takes regular uploads only")
        prs = h.server.prs.setdefault(repo_id, [])
        if create_pr:
            pr = {"num": len(prs) + 1, "title": header["summary"], "description": header.get("description", ""),
                  "files": {}, "deleted": [], "status": "open", "comments": [header.get("description", "")],
                  "author": "hfscan-bot", "parent": repo.sha}
            prs.append(pr)
        elif rev.startswith("refs/pr/"):
            pr = next((p for p in prs if p["num"] == int(rev.rsplit("/", 1)[1])), None)
            if pr is None:
                return h._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        else:
            pr = None
        if pr is not None:
            pr["files"].update(adds)
            pr["deleted"] = [d for d in pr["deleted"] + dels if d not in adds]
            view = Repo(h.server.root, repo_id, pr)
            sha = view.sha
            url = f"{h.server.server_url}/{repo_id}/discussions/{pr['num']}"
        else:
            for f, data in adds.items():
                (repo.path / f).parent.mkdir(parents=True, exist_ok=True)
                (repo.path / f).write_bytes(data)
            for f in dels:
                (repo.path / f).unlink(missing_ok=True)
            sha = Repo(h.server.root, repo_id).sha
            url = None
        h.server.commits.append((repo_id, rev, create_pr, sorted(adds)))
        return h._json(200, {"commitUrl": f"{h.server.server_url}/{repo_id}/commit/{sha}", "commitOid": sha,
                             "pullRequestUrl": url})


def _event(i: int, text: str) -> dict:
    return {"id": f"evt{i}", "type": "comment", "createdAt": "2026-01-01T00:00:00.000Z",
            "author": {"name": "hfscan-bot"},
            "data": {"edited": False, "hidden": False, "latest": {"raw": text, "html": text}, "numEdits": 0}}


def _discussion(self, repo: Repo, pr: dict, details: bool = False) -> dict:
    d = {"num": pr["num"], "title": pr["title"], "status": pr["status"], "isPullRequest": True,
         "createdAt": "2026-01-01T00:00:00.000Z", "author": {"name": pr["author"]},
         "repo": {"name": repo.id, "type": "model"}, "numComments": len(pr["comments"])}
    if details:
        d.update({"events": [_event(i, c) for i, c in enumerate(pr["comments"])],
                  "changes": {"base": "refs/heads/main"}, "filesWithConflicts": [], "diff": ""})
    return d


_Handler._discussion = _discussion
_Handler.do_POST = lambda self: _Writer.handle(self)


class HubServer:
    """Serve ``root`` on a free loopback port for the duration of a ``with`` block."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        root: Path
        log: list
        downloads: list
        prs: dict
        flaky: dict
        commits: list
        server_url: str

    def __init__(self, root: Path):
        self.httpd = self._Server(("127.0.0.1", 0), _Handler)
        self.httpd.root = Path(root)
        self.httpd.log = []
        self.httpd.downloads = []
        self.httpd.prs = {}
        self.httpd.flaky = {}
        self.httpd.commits = []
        self.httpd.server_url = self.url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def log(self) -> list:
        return self.httpd.log

    @property
    def prs(self) -> dict:
        return self.httpd.prs

    def full_downloads(self) -> list[tuple[str, str]]:
        """(repo, file) for every whole-file GET (HEADs and range reads are not downloads)."""
        return [(m, f) for m, f in self.httpd.downloads]

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
