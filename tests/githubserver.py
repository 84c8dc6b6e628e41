"""A GitHub REST API server for tests (repos and issues only), on 127.0.0.1, for pygithub's base_url."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

TOKEN = "ghp_test_token_abcdef0123456789"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _issue(self, owner, repo, i):
        base = self.server.url
        return {**i, "url": f"{base}/repos/{owner}/{repo}/issues/{i['number']}",
                "html_url": f"https://github.example/{owner}/{repo}/issues/{i['number']}",
                "repository_url": f"{base}/repos/{owner}/{repo}", "id": 1000 + i["number"]}

    def _auth(self):
        if self.headers.get("Authorization") not in (f"token {TOKEN}", f"Bearer {TOKEN}"):
            self._send(401, {"message": "Bad credentials"})
            return False
        return True

    def _body(self):
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

    def _begin(self, method: str) -> str | None:
        """Authenticate and log the request; its path, or None once a 401 has been sent."""
        if not self._auth():
            return None
        path = urlparse(self.path).path
        self.server.log.append((method, path))
        return path

    def do_GET(self):
        path = self._begin("GET")
        if path is None:
            return
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)", path)
        if m:
            o, r = m.groups()
            return self._send(200, {"id": 1, "name": r, "full_name": f"{o}/{r}", "owner": {"login": o},
                                    "url": f"{self.server.url}/repos/{o}/{r}"})
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues", path)
        if m:
            o, r = m.groups()
            return self._send(200, [self._issue(o, r, i) for i in self.server.issues.get(f"{o}/{r}", [])])
        self._send(404, {"message": "Not Found"})

    def do_POST(self):
        path = self._begin("POST")
        if path is None:
            return
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues", path)
        if m:
            o, r = m.groups()
            d = self._body()
            issues = self.server.issues.setdefault(f"{o}/{r}", [])
            i = {"number": len(issues) + 1, "title": d["title"], "body": d.get("body", ""), "state": "open"}
            issues.append(i)
            return self._send(201, self._issue(o, r, i))
        self._send(404, {"message": "Not Found"})

    def do_PATCH(self):
        path = self._begin("PATCH")
        if path is None:
            return
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/(\d+)", path)
        if m:
            o, r, n = m.groups()
            i = next(x for x in self.server.issues.get(f"{o}/{r}", []) if x["number"] == int(n))
            i.update({k: v for k, v in self._body().items() if k in ("title", "body", "state")})
            return self._send(200, self._issue(o, r, i))
        self._send(404, {"message": "Not Found"})


class GitHubServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.issues = {}
        self.httpd.log = []
        self.httpd.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return self.httpd.url

    @property
    def issues(self):
        return self.httpd.issues

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
