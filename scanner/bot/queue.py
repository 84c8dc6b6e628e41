"""The bot's durable job queue, in embedded SQLite.

One job per (repo, commit, settings): a second webhook for the same commit is a duplicate and queues nothing.
Delivery is at least once: a worker *claims* a job (``running``, with a lease); a job whose process died while
running is claimed again once its lease has expired (or at once, by `recover`, when the service restarts).
Transient failures (Hub 429/5xx, network) are retried with exponential back-off; after ``max_attempts`` the job
is ``dead`` with its last reason. Permanent failures (bad input) are ``failed`` at once.

States: ``queued`` → ``running`` → ``done`` | ``skipped`` | ``failed`` | ``dead`` (and ``running`` → ``queued``
for a retry).

Example:
    >>> q = JobQueue(Path("bot.sqlite"))
    >>> q.enqueue("org/m", "a" * 40, "dry-run")
    (1, True)
    >>> q.enqueue("org/m", "a" * 40, "dry-run")   # the same commit again: deduplicated
    (1, False)
    >>> q.claim().repo_id
    'org/m'
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

STATES = ("queued", "running", "done", "skipped", "failed", "dead")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id TEXT NOT NULL, sha TEXT NOT NULL, settings TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0, lease_until REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '', verdict TEXT, report TEXT, pr_url TEXT, seconds REAL,
    UNIQUE (repo_id, sha, settings)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before);
"""


@dataclass
class Job:
    id: int
    repo_id: str
    sha: str
    settings: str
    state: str
    attempts: int
    reason: str = ""
    verdict: str | None = None
    report: str | None = None
    pr_url: str | None = None
    seconds: float | None = None
    created: float = 0.0
    updated: float = 0.0

    @property
    def org(self) -> str:
        return self.repo_id.split("/")[0] if "/" in self.repo_id else self.repo_id


class JobQueue:
    """The queue in one SQLite file (WAL: the web server and the workers use it at once)."""

    def __init__(self, path: Path, max_attempts: int = 5, base_delay: float = 30.0, lease: float = 6 * 3600):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts, self.base_delay, self.lease = max_attempts, base_delay, lease
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _tx(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def enqueue(self, repo_id: str, sha: str, settings: str) -> tuple[int, bool]:
        """(job id, whether it is new): a job already known for this commit and settings is not queued again."""
        now = time.time()
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO jobs (repo_id, sha, settings, created, updated) "
                                   "VALUES (?, ?, ?, ?, ?)", (repo_id, sha, settings, now, now))
            new = cur.rowcount == 1
            row = self._db.execute("SELECT id FROM jobs WHERE repo_id=? AND sha=? AND settings=?",
                                   (repo_id, sha, settings)).fetchone()
        return int(row[0]), new

    def claim(self) -> Job | None:
        """The oldest job due (queued past its back-off, or running past its lease), now ``running``."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE (state='queued' AND not_before<=?) OR (state='running' AND "
                    "lease_until<?) ORDER BY created, id LIMIT 1", (now, now)).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                self._db.execute("UPDATE jobs SET state='running', attempts=attempts+1, lease_until=?, updated=? "
                                 "WHERE id=?", (now + self.lease, now, row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(int(row[0]))

    def recover(self) -> int:
        """At start-up: jobs left ``running`` by a process that died are queued again. Returns how many."""
        return self._tx("UPDATE jobs SET state='queued', lease_until=0, updated=? WHERE state='running'",
                        (time.time(),)).rowcount

    def finish(self, job: Job, state: str, reason: str = "", **result) -> None:
        """``done``, ``skipped`` or ``failed`` (no retry), with the scan's results."""
        assert state in ("done", "skipped", "failed"), state
        self._tx("UPDATE jobs SET state=?, reason=?, verdict=?, report=?, pr_url=?, seconds=?, updated=? WHERE id=?",
                 (state, reason, result.get("verdict"), result.get("report"), result.get("pr_url"),
                  result.get("seconds"), time.time(), job.id))

    def retry(self, job: Job, reason: str) -> str:
        """A transient failure: queued again after ``base_delay · 2^(attempts-1)``, or ``dead`` after
        ``max_attempts``. Returns the new state."""
        current = self.get(job.id)
        if current.attempts >= self.max_attempts:
            self._tx("UPDATE jobs SET state='dead', reason=?, updated=? WHERE id=?",
                     (f"{reason} (after {current.attempts} attempts)", time.time(), job.id))
            return "dead"
        delay = self.base_delay * 2 ** (current.attempts - 1)
        self._tx("UPDATE jobs SET state='queued', reason=?, not_before=?, lease_until=0, updated=? WHERE id=?",
                 (reason, time.time() + delay, time.time(), job.id))
        return "queued"

    def get(self, job_id: int) -> Job:
        row = self._tx(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job(*row)

    def recent(self, limit: int = 50) -> list[Job]:
        return [Job(*r) for r in self._tx(f"SELECT {_COLUMNS} FROM jobs ORDER BY updated DESC LIMIT ?", (limit,))]

    def counts(self) -> dict[str, int]:
        got = dict(self._tx("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {s: int(got.get(s, 0)) for s in STATES}

    def scan_seconds(self) -> tuple[float, int]:
        total, n = self._tx("SELECT COALESCE(SUM(seconds), 0), COUNT(seconds) FROM jobs WHERE state='done'").fetchone()
        return float(total), int(n)

    def org_jobs_since(self, org: str, since: float) -> int:
        """Jobs of ``org`` created since ``since`` (the per-org daily budget)."""
        return int(self._tx("SELECT COUNT(*) FROM jobs WHERE substr(repo_id, 1, ?)=? AND created>=? AND "
                            "state!='skipped'", (len(org) + 1, org + "/", since)).fetchone()[0])


_COLUMNS = "id, repo_id, sha, settings, state, attempts, reason, verdict, report, pr_url, seconds, created, updated"
