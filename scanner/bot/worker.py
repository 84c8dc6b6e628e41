"""Run one bot job: the etiquette checks, the same pipeline as ``hfscan check``, then publishing as configured.

Modes: ``dry-run`` (the default: scan and report, publish nothing), ``report-only`` (a PR that changes only the
model card), ``open-pr`` (the one hfscan PR with the defended weights, updated on later commits) and
``push-variant`` (the defended variant uploaded to ``ORG/NAME-hfscan-defended``).

A job is skipped, with its reason, when the repo opted out (the card tag ``hfscan-opt-out``, or
``HFSCAN_BOT_OPT_OUT``), when it is hfscan's own output (the tag ``hfscan``: a defended variant), when its commit
is no longer the one the webhook named, when hfscan does not scan its kind of model, or when its org has spent
its daily budget.

Example:
    >>> outcome = run_job(job, BotSettings(mode="dry-run"), workdir=Path("bot/reports"))
    >>> outcome.state, outcome.verdict
    ('done', 'backdoor')
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..errors import HfscanError, TransientHubError, UnsupportedModelError
from .queue import Job

MODES = ("dry-run", "report-only", "open-pr", "push-variant")
OPT_OUT_TAG = "hfscan-opt-out"
OWN_TAG = "hfscan"


@dataclass
class BotSettings:
    """What the bot does with each push (from the environment by default: `from_env`)."""

    mode: str = "dry-run"
    opt_out: list[str] = field(default_factory=list)
    org_budget: int = 200  # scans per org per day (the Hub allows 1,000 webhook calls a day per webhook)
    search_budget: str = "small"
    max_peers: int = 3

    @classmethod
    def from_env(cls) -> "BotSettings":
        mode = config.bot_mode()
        if mode not in MODES:
            raise HfscanError(f"HFSCAN_BOT_MODE must be one of {', '.join(MODES)}, not {mode!r}")
        budget = config.bot_search_budget()
        if budget not in ("off", "small", "default", "large"):
            raise HfscanError(f"HFSCAN_BOT_SEARCH_BUDGET must be off, small, default or large, not {budget!r}")
        return cls(mode=mode, opt_out=config.bot_opt_out(), org_budget=config.bot_org_budget(), search_budget=budget)

    @property
    def key(self) -> str:
        """What makes two scans of one commit the same job."""
        from .. import __version__

        return f"{self.mode};{self.search_budget};{self.max_peers};hfscan {__version__}"


@dataclass
class Outcome:
    state: str  # done | skipped | failed | retry
    reason: str = ""
    verdict: str | None = None
    report: str | None = None
    pr_url: str | None = None
    seconds: float | None = None


def skip_reason(job: Job, remote, settings: BotSettings) -> str | None:
    """Why this repo must not be scanned now (``remote``: its `RemoteModel` at the current head)."""
    tags = {t.lower() for t in remote.tags} | {str(t).lower() for t in (remote.card.get("tags") or [])}
    if job.repo_id in settings.opt_out or job.org in settings.opt_out or OPT_OUT_TAG in tags:
        return "the repo opted out of hfscan"
    if OWN_TAG in tags:
        return "an hfscan output (a defended variant), not rescanned"
    if remote.sha and job.sha and remote.sha != job.sha:
        return f"the head moved on to {remote.sha[:10]}; that commit gets its own job"
    return None


def run_job(job: Job, settings: BotSettings, workdir: Path, source=None, log=lambda s: None) -> Outcome:
    """Scan ``job``'s commit and publish as ``settings.mode`` says; errors become the outcome, never raised."""
    from ..sources import HfHub

    t0 = time.time()
    hub = source or HfHub()
    try:
        remote = hub.describe(job.repo_id, headers=False)  # the head now: tags, card, whether it moved on
        why = skip_reason(job, remote, settings)
        if why:
            return Outcome("skipped", why)
        report, out = _scan(job, settings, workdir, hub, log)
        pr_url = _publish(report, job, settings, hub, out, log)
    except TransientHubError as e:
        return Outcome("retry", str(e))
    except HfscanError as e:  # bad input: retrying would not help; a kind of model hfscan does not scan: skipped
        kind = "skipped" if isinstance(e, UnsupportedModelError) else "failed"
        return Outcome(kind, str(e).splitlines()[0] if str(e) else e.__class__.__name__)
    return Outcome("done", "", str(report.verdict), str(out / "report.html"), pr_url, round(time.time() - t0, 1))


def _scan(job: Job, settings: BotSettings, workdir: Path, hub, log):
    from ..pipeline import CheckOptions, check
    from ..report import write_reports

    out = workdir / f"job-{job.id}"
    if out.exists():  # an earlier attempt of this job (at-least-once delivery)
        shutil.rmtree(out)
    opts = CheckOptions(target=f"{job.repo_id}@{job.sha}", output_dir=out, search_budget=settings.search_budget,
                        max_peers=settings.max_peers, defend=settings.mode in ("open-pr", "push-variant", "dry-run"))
    report = check(opts, source=hub, log=log)
    write_reports(report, out, ["json", "md", "html"])
    return report, out


def _publish(report, job: Job, settings: BotSettings, hub, out: Path, log) -> str | None:
    from ..publish import publish_pr, push_variant

    if settings.mode == "dry-run":
        return None
    defended = Path(report.defense.output_dir) if report.defense else None
    if settings.mode == "push-variant":
        if defended is None:
            return None
        name = job.repo_id.split("/")[-1]
        return push_variant(hub, f"{job.org}/{name}-hfscan-defended", defended, send=True, log=log).url
    mode = "report-only" if settings.mode == "report-only" or defended is None else "variant"
    return publish_pr(report, hub, job.repo_id, Path(report.target.path), defended, mode, send=True, log=log).url
