"""The bot service: webhook intake, the worker pool, metrics; independent of the web framework (`app` wraps it).

Example:
    >>> bot = Bot(Path("bot"), BotSettings(), secret="s3cret")
    >>> bot.accept({"x-webhook-secret": "s3cret"}, payload_bytes)
    (202, {'status': 'queued', 'job': 1})
    >>> bot.work_once()   # claim one due job and run it (the worker threads do this in a loop)
    True
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import Counter
from pathlib import Path

from .events import PayloadError, parse_event
from .queue import JobQueue
from .worker import BotSettings, Outcome, run_job

DAY = 24 * 3600


class Bot:
    """One bot: its queue (``root/queue.sqlite``), its reports (``root/reports``), its workers."""

    def __init__(self, root: Path, settings: BotSettings, secret: str, source_factory=None, log=lambda s: None,
                 max_attempts: int = 5, retry_delay: float = 30.0):
        if not secret:
            raise ValueError("a webhook secret is required (HFSCAN_WEBHOOK_SECRET)")
        self.root, self.settings, self._secret = Path(root), settings, secret
        self.queue = JobQueue(self.root / "queue.sqlite", max_attempts=max_attempts, base_delay=retry_delay)
        self.reports = self.root / "reports"
        self.recovered = self.queue.recover()
        self.webhooks: Counter[str] = Counter()
        self._source_factory = source_factory
        self._log = log
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def accept(self, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        """Answer one webhook call: (HTTP status, JSON body). Nothing is queued unless the secret matches and the
        payload asks for a scan of a commit not seen before with these settings."""
        given = headers.get("x-webhook-secret", "")
        if not hmac.compare_digest(given.encode(), self._secret.encode()):
            self.webhooks["unauthorized"] += 1
            return 401, {"error": "bad or missing X-Webhook-Secret"}
        try:
            event = parse_event(body)
        except PayloadError as e:
            self.webhooks["bad_request"] += 1
            return 400, {"error": str(e)}
        if event.ignored:
            self.webhooks["ignored"] += 1
            return 200, {"status": "ignored", "reason": event.ignored}
        job_id, new = self.queue.enqueue(event.repo_id, event.sha, self.settings.key)
        if not new:
            self.webhooks["duplicate"] += 1
            return 200, {"status": "duplicate", "job": job_id}
        org = event.repo_id.split("/")[0]
        if self.queue.org_jobs_since(org, time.time() - DAY) > self.settings.org_budget:
            self.queue.finish(self.queue.get(job_id), "skipped", f"{org} spent its daily budget of "
                                                               f"{self.settings.org_budget} scans")
            self.webhooks["over_budget"] += 1
            return 202, {"status": "skipped", "job": job_id, "reason": "daily budget spent"}
        self.webhooks["queued"] += 1
        return 202, {"status": "queued", "job": job_id}

    def work_once(self) -> bool:
        """Claim one due job and run it; ``False`` when none is due."""
        job = self.queue.claim()
        if job is None:
            return False
        self._log(f"job {job.id}: scanning {job.repo_id}@{job.sha[:10]} (attempt {job.attempts})")
        source = self._source_factory() if self._source_factory else None
        outcome: Outcome = run_job(job, self.settings, self.reports, source=source, log=self._log)
        if outcome.state == "retry":
            state = self.queue.retry(job, outcome.reason)
        else:
            self.queue.finish(job, outcome.state, outcome.reason, verdict=outcome.verdict, report=outcome.report,
                              pr_url=outcome.pr_url, seconds=outcome.seconds)
            state = outcome.state
        self._log(f"job {job.id}: {state}" + (f" ({outcome.verdict})" if outcome.verdict else "")
                  + (f": {outcome.reason}" if outcome.reason else ""))
        return True

    def start(self, workers: int = 1, idle: float = 2.0) -> None:
        """Start ``workers`` threads that run due jobs until `stop`."""
        for i in range(workers):
            t = threading.Thread(target=self._loop, args=(idle,), name=f"hfscan-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _loop(self, idle: float) -> None:
        while not self._stop.is_set():
            try:
                busy = self.work_once()
            except Exception as e:  # a worker never dies of one job: the job stays leased and is retried later
                self._log(f"worker error: {e.__class__.__name__}: {e}")
                busy = False
            if not busy:
                self._stop.wait(idle)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self.queue.close()

    def metrics(self) -> str:
        """Prometheus text exposition: jobs by state, webhook answers, scan seconds."""
        lines = ["# HELP hfscan_jobs Bot jobs by state.", "# TYPE hfscan_jobs gauge"]
        lines += [f'hfscan_jobs{{state="{s}"}} {n}' for s, n in self.queue.counts().items()]
        lines += ["# HELP hfscan_webhooks_total Webhook calls by answer.", "# TYPE hfscan_webhooks_total counter"]
        lines += [f'hfscan_webhooks_total{{result="{k}"}} {v}' for k, v in sorted(self.webhooks.items())]
        total, n = self.queue.scan_seconds()
        lines += ["# HELP hfscan_scan_seconds Seconds spent in finished scans.", "# TYPE hfscan_scan_seconds summary",
                  f"hfscan_scan_seconds_sum {total:.1f}", f"hfscan_scan_seconds_count {n}"]
        return "\n".join(lines) + "\n"
