"""The Hub bot: webhooks in (`events`), a durable SQLite queue (`queue`), workers that scan and publish
(`worker`), the service and its metrics (`service`), the HTTP app (`app`). ``hfscan serve`` runs it;
``hfscan webhook-job`` runs one event as a Hugging Face Job. docs/bot.md has the deployment steps.
"""

from .events import Event, PayloadError, parse_event
from .queue import Job, JobQueue
from .service import Bot
from .worker import MODES, BotSettings, Outcome, run_job

__all__ = ["Bot", "BotSettings", "Event", "Job", "JobQueue", "MODES", "Outcome", "PayloadError", "parse_event",
           "run_job"]
