"""Every environment variable hfscan reads, in one place.

Values are read when asked for (not at import), so a test or a long-lived process sees changes.
The device chosen on the command line is held here too (`use_device`), never written back into
``os.environ``.

| variable | meaning | default |
| --- | --- | --- |
| ``HFSCAN_DEVICE`` | where models run: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` | ``auto`` |
| ``HFSCAN_PROBE_DTYPE`` | precision of triggered inputs: ``auto``, ``bfloat16``, ``float32`` | ``auto`` |
| ``HFSCAN_HUB_DIR`` | a local hub folder (``ORG/NAME/`` repos) | none |
| ``HFSCAN_CACHE`` | hfscan's cache (demo hub, test zoo, audit cache) | ``$XDG_CACHE_HOME/hfscan`` |
| ``HFSCAN_RETRY_DELAY`` | first back-off delay in seconds for Hub 429/5xx answers | ``1`` |
| ``HFSCAN_PUBLISH`` | ``1``: really send PRs, pushes and issues (as ``--yes``) | off |
| ``HFSCAN_DEBUG`` | set: tracebacks instead of one-line errors | off |
| ``HF_ENDPOINT`` | the Hub's address (a mirror, a test server) | ``https://huggingface.co`` |
| ``HF_HUB_CACHE`` | huggingface_hub's download cache | huggingface_hub's |
| ``HF_TOKEN`` | read by huggingface_hub itself, never by hfscan; never printed | |
| ``GITHUB_TOKEN`` / ``GITHUB_API_URL`` | GitHub issues from `publish.github_issue` | none / ``https://api.github.com`` |
| ``HFSCAN_CONFIG`` | the settings file (``--config``; default ``./hfscan.toml``, else ``[tool.hfscan]``) | none |
| ``HF_HUB_OFFLINE`` | scan only what is in the Hugging Face cache | off |
| ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` | read by huggingface_hub: no token is sent; hfscan names it when the Hub says 401 | off |
| ``HF_HUB_DISABLE_PROGRESS_BARS`` / ``CI`` | no progress bars | off |
| ``HFSCAN_WEBHOOK_SECRET`` | the bot: the secret every webhook call must carry (``X-Webhook-Secret``) | none (required) |
| ``HFSCAN_BOT_DIR`` | the bot: its queue database and reports | ``$HFSCAN_CACHE/bot`` |
| ``HFSCAN_BOT_MODE`` | the bot: ``dry-run``, ``report-only``, ``open-pr`` or ``push-variant`` | ``dry-run`` |
| ``HFSCAN_BOT_WORKERS`` | the bot: scans run at once | ``1`` |
| ``HFSCAN_BOT_OPT_OUT`` | the bot: repos or orgs never scanned (comma-separated) | none |
| ``HFSCAN_BOT_ORG_BUDGET`` | the bot: scans per org per day | ``200`` |
| ``HFSCAN_BOT_SEARCH_BUDGET`` | the bot: gradient-search effort per scan (``off``, ``small``, ``default``, ``large``) | ``small`` |
| ``WEBHOOK_PAYLOAD`` | ``hfscan webhook-job``: the payload a Hugging Face Job gets from its webhook | none |

Example:
    >>> use_device("cpu"); device_name()
    'cpu'
    >>> use_device(None)  # back to HFSCAN_DEVICE (or auto)
"""

from __future__ import annotations

import os
from pathlib import Path

_device_override: str | None = None


def _get(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def use_device(name: str | None) -> None:
    """Set the device for this process (the ``--device`` option); ``None`` goes back to ``HFSCAN_DEVICE``."""
    global _device_override
    _device_override = name


def device_name() -> str:
    return (_device_override or _get("HFSCAN_DEVICE", "auto") or "auto").strip().lower() or "auto"


def probe_dtype_name() -> str:
    return (_get("HFSCAN_PROBE_DTYPE", "auto") or "auto").strip().lower()


def hub_dir(given: str | os.PathLike | None = None) -> str | os.PathLike | None:
    """The local hub folder: the one given, else ``HFSCAN_HUB_DIR``, else none."""
    return given or _get("HFSCAN_HUB_DIR")


def cache_dir() -> Path:
    """hfscan's own cache folder (demo hub, test zoo, audit cache)."""
    explicit = _get("HFSCAN_CACHE")
    if explicit:
        return Path(explicit)
    return Path(_get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hfscan"


def retry_delay() -> float:
    return float(_get("HFSCAN_RETRY_DELAY", "1"))


def publish_confirmed() -> bool:
    return _get("HFSCAN_PUBLISH") == "1"


def debug() -> bool:
    return bool(_get("HFSCAN_DEBUG"))


def hf_endpoint() -> str:
    return (_get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE``: scan only what is in the Hugging Face cache, never call the Hub."""
    return (_get("HF_HUB_OFFLINE") or "").lower() in ("1", "true", "yes", "on")


def hf_implicit_token_disabled() -> bool:
    """``HF_HUB_DISABLE_IMPLICIT_TOKEN``: huggingface_hub sends no token unless one is passed (hfscan passes none)."""
    return (_get("HF_HUB_DISABLE_IMPLICIT_TOKEN") or "").lower() in ("1", "true", "yes", "on")


def hf_hub_cache() -> str | None:
    return _get("HF_HUB_CACHE")


def progress_bars() -> bool:
    """Progress bars unless ``HF_HUB_DISABLE_PROGRESS_BARS`` is set or a CI runner (``CI``) runs hfscan."""
    off = (_get("HF_HUB_DISABLE_PROGRESS_BARS") or "").lower() in ("1", "true", "yes", "on")
    return not off and (_get("CI") or "").lower() not in ("1", "true", "yes")


def webhook_secret() -> str | None:
    return _get("HFSCAN_WEBHOOK_SECRET")


def bot_dir() -> Path:
    return Path(_get("HFSCAN_BOT_DIR") or cache_dir() / "bot")


def bot_mode() -> str:
    return (_get("HFSCAN_BOT_MODE", "dry-run") or "dry-run").strip().lower()


def bot_workers() -> int:
    return int(_get("HFSCAN_BOT_WORKERS", "1") or 1)


def bot_opt_out() -> list[str]:
    return [x.strip() for x in (_get("HFSCAN_BOT_OPT_OUT") or "").split(",") if x.strip()]


def bot_org_budget() -> int:
    return int(_get("HFSCAN_BOT_ORG_BUDGET", "200") or 200)


def bot_search_budget() -> str:
    return (_get("HFSCAN_BOT_SEARCH_BUDGET", "small") or "small").strip().lower()


def webhook_payload() -> str | None:
    return _get("WEBHOOK_PAYLOAD")


def github_token() -> str | None:
    return _get("GITHUB_TOKEN")


def github_api_url() -> str:
    return _get("GITHUB_API_URL") or "https://api.github.com"
