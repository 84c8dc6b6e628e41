"""Hugging Face webhook payloads: validated, and turned into the one scan they ask for (or the reason not to).

The Hub sends ``{"event": {"action", "scope"}, "repo": {"type", "name", "headSha", ...}, "updatedRefs": [...]}``
(scopes ``repo`` and ``repo.content``). A push to a branch of a model repo asks for a scan of that branch's new
commit; everything else is acknowledged and ignored with a reason: other repo types and scopes, deletions,
and the refs hfscan writes itself (``refs/pr/*``: its own PRs, the loop guard).

Example:
    >>> e = parse_event(b'{"event": {"action": "update", "scope": "repo.content"}, '
    ...                 b'"repo": {"type": "model", "name": "org/m", "headSha": "' + b"a" * 40 + b'"}}')
    >>> e.repo_id, e.sha, e.ignored
    ('org/m', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', None)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_PAYLOAD = 64 * 1024  # the Hub's payloads are a few KB
_SHA = re.compile(r"[0-9a-f]{40}")


class PayloadError(ValueError):
    """A payload that is not a Hugging Face webhook event (answered 400, nothing queued)."""


@dataclass(frozen=True)
class Event:
    """What one webhook call asks for: a scan of ``repo_id`` at ``sha``, unless ``ignored`` says why not."""

    repo_id: str
    sha: str
    ref: str = "refs/heads/main"
    ignored: str | None = None


def parse_event(body: bytes) -> Event:
    """The scan a webhook body asks for. Raises `PayloadError` on anything malformed."""
    if len(body) > MAX_PAYLOAD:
        raise PayloadError(f"payload over {MAX_PAYLOAD} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PayloadError("payload is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("event"), dict) or not isinstance(data.get("repo"), dict):
        raise PayloadError("payload has no event and repo objects")
    repo, event = data["repo"], data["event"]
    name, sha = repo.get("name"), repo.get("headSha")
    if not isinstance(name, str) or not _valid_repo_id(name):
        raise PayloadError("payload names no valid repo")
    refs = data.get("updatedRefs") if isinstance(data.get("updatedRefs"), list) else []
    ref = next((r.get("ref") for r in refs if isinstance(r, dict) and isinstance(r.get("ref"), str)), "refs/heads/main")
    why = _ignored(repo, event, refs)
    if why is None and (not isinstance(sha, str) or not _SHA.fullmatch(sha)):
        raise PayloadError("payload has no 40-hex headSha")
    return Event(name, sha if isinstance(sha, str) else "", ref, why)


def _ignored(repo: dict, event: dict, refs: list) -> str | None:
    if repo.get("type") != "model":
        return f"not a model repo ({repo.get('type')})"
    if event.get("scope") not in ("repo", "repo.content"):
        return f"scope {event.get('scope')} is not a push"
    if event.get("action") not in ("create", "update"):
        return f"action {event.get('action')} is not a push"
    names = [r.get("ref", "") for r in refs if isinstance(r, dict)]
    if names and all(n.startswith("refs/pr/") for n in names):
        return "a pull-request ref (hfscan's own PRs are never rescanned)"
    if names and all(isinstance(r, dict) and _deleted(r) for r in refs):
        return "a deleted ref"
    return None


def _deleted(ref: dict) -> bool:
    return set(str(ref.get("newSha") or "0")) == {"0"}


def _valid_repo_id(name: str) -> bool:
    from ..sources import looks_like_repo_id

    return looks_like_repo_id(name) and "@" not in name
