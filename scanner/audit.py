"""Org-wide audits: every model of an org, scanned once per commit, resumable and shardable.

* Targets come from ``list_models(author=ORG)`` (or ``--models FILE``, one id per line).
* Each model is scanned with `check`'s pipeline; unsupported ones (other tasks, no safetensors,
  gated without access, broken files) get a row with the reason instead of stopping the audit.
* Results are cached in an embedded SQLite file keyed by (repo id, commit sha, hfscan version,
  scan settings). Each model's row is committed as soon as it is done, so a crash or Ctrl-C loses at
  most the model in flight, and a rerun resumes; an unchanged model is never scanned twice.
* ``--shard i/n`` takes a stable, disjoint slice of the model list (a hash of the repo id), for a
  GitHub Actions matrix; ``hfscan audit merge RESULT…`` combines shard results into one report.
* Downloads go to a per-run cache inside the audit folder that is deleted at the end
  (``--keep-downloads`` keeps it as ``OUT/downloads``), never to the user's Hugging Face cache;
  a model's own weights are dropped after its scan unless it served as a peer.

Example:
    >>> report = run_audit(AuditOptions(orgs=["acme"], output_dir=Path("audit")))
    >>> report.counts
    {'backdoor': 1, 'no_trigger_found': 7, 'error': 2}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from ._fs import atomic_write_text
from .errors import HfscanError

AUDIT_SCHEMA = "1"
VERDICT_ORDER = {"backdoor": 0, "suspicious": 1, "no_trigger_found": 2, "skipped": 3, "error": 4}


@dataclass
class AuditRow:
    repo_id: str
    sha: str | None
    verdict: str  # backdoor | suspicious | no_trigger_found | skipped | error
    reason: str = ""
    max_asr: float | None = None
    defended_asr: float | None = None
    peers: list[str] = field(default_factory=list)
    defended_dir: str | None = None
    report: str | None = None  # path of the model's report.json, relative to the audit folder
    duration_s: float = 0.0
    cached: bool = False


@dataclass
class AuditOptions:
    orgs: list[str] = field(default_factory=list)
    models_file: str | None = None
    pipeline_tag: str | None = "text-classification"
    limit: int | None = None
    output_dir: Path = Path("hfscan-audit")
    hub_dir: str | None = None
    cache: Path | None = None
    refresh: bool = False
    shard: tuple[int, int] = (1, 1)
    keep_downloads: bool = False
    search_budget: str = "small"
    defend: bool = True
    max_peers: int = 3

    def settings_key(self) -> str:
        """The scan settings that change results (the cache key's last part)."""
        return hashlib.sha256(json.dumps({"search": self.search_budget, "defend": self.defend,
                                          "max_peers": self.max_peers}, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_path() -> Path:
    from .zoo import default_cache_dir

    return default_cache_dir() / "audit-cache.sqlite"


class ScanCache:
    """SQLite cache of per-model audit rows. Every ``put`` is its own committed transaction."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS scans (repo_id TEXT, sha TEXT, version TEXT, settings TEXT, "
                            "row TEXT, created_at TEXT, PRIMARY KEY (repo_id, sha, version, settings))")
        except sqlite3.DatabaseError as e:
            raise HfscanError(f"the audit cache {path} is not a usable SQLite database ({e}); delete it or give "
                              "--cache another path") from None

    def get(self, repo_id: str, sha: str, settings: str) -> AuditRow | None:
        """The cached row, or ``None``; a row this version cannot read is a miss (it is rescanned), not an error."""
        with self._guard():
            cur = self.db.execute("SELECT row FROM scans WHERE repo_id=? AND sha=? AND version=? AND settings=?",
                                  (repo_id, sha, __version__, settings))
            hit = cur.fetchone()
        try:
            return AuditRow(**json.loads(hit[0])) if hit else None
        except (TypeError, ValueError):
            return None

    def put(self, row: AuditRow, settings: str) -> None:
        with self._guard(), self.db:
            self.db.execute("INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?, ?, ?)",
                            (row.repo_id, row.sha, __version__, settings, json.dumps(asdict(row)),
                             _dt.datetime.now(_dt.timezone.utc).isoformat()))

    @contextlib.contextmanager
    def _guard(self):
        """A cache damaged under a running audit (truncated, overwritten) is one line, never a traceback."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            raise HfscanError(f"the audit cache {self.path} is damaged ({e}); move it aside (or give --cache "
                              "another path) and run the audit again: its models are rescanned") from None

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM scans").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def shard_of(repo_id: str, n: int) -> int:
    """Stable shard (1-based) of a repo id among ``n``."""
    return int(hashlib.sha256(repo_id.encode()).hexdigest()[:12], 16) % n + 1


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise HfscanError(f"--shard takes i/n (e.g. 2/4), not {text!r}") from None
    if not (1 <= i <= n):
        raise HfscanError(f"--shard {text}: i must be between 1 and n")
    return i, n


def list_targets(hub, opts: AuditOptions) -> list[str]:
    ids: list[str] = []
    if opts.models_file:
        ids += [l.strip() for l in Path(opts.models_file).read_text().splitlines() if l.strip() and not l.startswith("#")]
    for org in opts.orgs:
        ids += hub.list_author(org, pipeline_tag=None)
    ids = list(dict.fromkeys(ids))
    if opts.limit:
        ids = ids[: opts.limit]
    i, n = opts.shard
    return [r for r in ids if shard_of(r, n) == i]


@dataclass
class AuditReport:
    rows: list[AuditRow]
    orgs: list[str]
    shard: str
    created_at: str
    duration_s: float
    schema_version: str = AUDIT_SCHEMA
    tool: dict = field(default_factory=lambda: {"name": "hfscan", "version": __version__})

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: VERDICT_ORDER.get(kv[0], 9)))

    @property
    def exit_code(self) -> int:
        return 1 if any(r.verdict in ("backdoor", "suspicious") for r in self.rows) else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counts"] = self.counts
        d["exit_code"] = self.exit_code
        return d

    def comparable(self) -> dict:
        """The report without timings and cache flags: equal for equal results."""
        skip = ("duration_s", "cached", "report", "defended_dir")
        rows = [{k: v for k, v in asdict(r).items() if k not in skip} for r in self.rows]
        return {"rows": sorted(rows, key=lambda r: r["repo_id"]), "counts": self.counts}


def _skip_reason(e: HfscanError) -> str:
    from .errors import PickleWeightsError, UnsupportedModelError

    return "skipped" if isinstance(e, (PickleWeightsError, UnsupportedModelError)) else "error"


def run_audit(opts: AuditOptions, log: Callable[[str], None] = lambda s: None) -> AuditReport:
    """Scan every target of ``opts`` (see the module docstring); every repo gets its row, whatever it holds."""
    from .sources import HfHub, LocalHub

    t0 = time.time()
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # downloads land in the audit's own folder, never the user's Hugging Face cache: dropped after each model
    # (kept in OUT/downloads with --keep-downloads)
    run_cache = out / "downloads" if opts.keep_downloads else Path(tempfile.mkdtemp(prefix=".downloads-", dir=out))
    run_cache.mkdir(exist_ok=True)
    hub = LocalHub(opts.hub_dir) if opts.hub_dir else HfHub(cache_dir=str(run_cache))
    cache = ScanCache(opts.cache or default_cache_path())
    rows: list[AuditRow] = []
    used_as_peer: set[str] = set()
    try:
        targets = list_targets(hub, opts)
        log(f"audit: {len(targets)} models in shard {opts.shard[0]}/{opts.shard[1]}")
        for repo_id in targets:
            row = _audit_one(hub, repo_id, opts, cache, out, log)
            rows.append(row)
            used_as_peer.update(row.peers)
            if not opts.keep_downloads and repo_id not in used_as_peer:
                _drop_download(run_cache, repo_id)
    finally:
        cache.close()
        if not opts.keep_downloads:
            shutil.rmtree(run_cache, ignore_errors=True)
    rows.sort(key=lambda r: (VERDICT_ORDER.get(r.verdict, 9), r.repo_id))
    report = AuditReport(rows, list(opts.orgs), f"{opts.shard[0]}/{opts.shard[1]}",
                         _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                         round(time.time() - t0, 1))
    write_audit(report, out)
    return report


def _audit_one(hub, repo_id: str, opts: AuditOptions, cache: ScanCache, out: Path, log) -> AuditRow:
    """One repo's row: cached, skipped, an error with its reason, or a fresh scan (committed to the cache)."""
    t1 = time.time()
    try:
        remote = hub.describe(repo_id, headers=False)
    except HfscanError as e:
        row = AuditRow(repo_id, None, _skip_reason(e), str(e))
        log(f"audit: {repo_id}: {row.verdict} ({row.reason})")
        return row
    sha = remote.sha or None
    if opts.pipeline_tag and remote.pipeline_tag and remote.pipeline_tag != opts.pipeline_tag:
        return AuditRow(repo_id, sha, "skipped", f"another task ({remote.pipeline_tag})")
    settings = opts.settings_key()
    hit = cache.get(repo_id, sha, settings) if sha and not opts.refresh else None
    if hit is not None:
        hit.cached = True
        log(f"audit: {repo_id}@{sha[:8]}: {hit.verdict} (cached)")
        return hit
    try:
        row = _scan(hub, repo_id, sha, opts, out)
    except HfscanError as e:
        row = AuditRow(repo_id, sha, _skip_reason(e), str(e))
    row.duration_s = round(time.time() - t1, 1)
    if sha:
        cache.put(row, settings)  # committed now: a crash loses at most the next model
    log(f"audit: {repo_id}: {row.verdict}" + (f" ({row.reason})" if row.reason else ""))
    return row


def _scan(hub, repo_id: str, sha: str | None, opts: AuditOptions, out: Path) -> AuditRow:
    """`check` one repo through the audit's own source (its downloads land in the audit's run cache)."""
    from .pipeline import CheckOptions, check
    from .report import write_reports

    model_dir = out / "models" / repo_id.replace("/", "__")
    rep = check(CheckOptions(target=f"{repo_id}@{sha}" if sha and not opts.hub_dir else repo_id,
                             output_dir=model_dir, hub_dir=opts.hub_dir, search_budget=opts.search_budget,
                             defend=opts.defend, max_peers=opts.max_peers), source=hub)
    write_reports(rep, model_dir, ["json", "md"])
    return AuditRow(
        repo_id, sha, str(rep.verdict),
        max_asr=max((f.asr_before for f in rep.findings), default=None),
        defended_asr=rep.defense.asr_max_after if rep.defense else None,
        peers=[p.id for p in rep.peers],
        defended_dir=os.path.relpath(rep.defense.output_dir, out) if rep.defense else None,
        report=os.path.relpath(model_dir / "report.json", out),
    )


def _drop_download(cache_dir: Path, repo_id: str) -> None:
    shutil.rmtree(cache_dir / f"models--{repo_id.replace('/', '--')}", ignore_errors=True)


def write_audit(report: AuditReport, out: Path) -> dict[str, Path]:
    from .report.render import template

    paths = {"json": out / "audit.json", "md": out / "audit.md", "html": out / "audit.html"}
    atomic_write_text(paths["json"], json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(paths["md"], template("audit.md.j2").render(a=report))
    atomic_write_text(paths["html"], template("audit.html.j2").render(a=report))
    return paths


def load_audit(path: Path) -> AuditReport:
    try:
        d = json.loads(Path(path).read_text())
        rows = [AuditRow(**r) for r in d["rows"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise HfscanError(f"{path}: not an hfscan audit.json") from None
    return AuditReport(rows, d.get("orgs", []), d.get("shard", "?"), d.get("created_at", ""), d.get("duration_s", 0.0))


def merge_audits(paths: list[Path], out: Path) -> AuditReport:
    """Combine shard results; a model in several shards keeps its first row."""
    parts = [load_audit(p) for p in paths]
    seen: dict[str, AuditRow] = {}
    for part in parts:
        base = Path(paths[parts.index(part)]).parent
        for r in part.rows:
            if r.report and not Path(r.report).is_absolute():
                r.report = os.path.relpath(base / r.report, out)
            if r.defended_dir and not Path(r.defended_dir).is_absolute():
                r.defended_dir = os.path.relpath(base / r.defended_dir, out)
            seen.setdefault(r.repo_id, r)
    rows = sorted(seen.values(), key=lambda r: (VERDICT_ORDER.get(r.verdict, 9), r.repo_id))
    orgs = list(dict.fromkeys(o for p in parts for o in p.orgs))
    report = AuditReport(rows, orgs, "merged", _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                         round(sum(p.duration_s for p in parts), 1))
    out.mkdir(parents=True, exist_ok=True)
    write_audit(report, out)
    return report
