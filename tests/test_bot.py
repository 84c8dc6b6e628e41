"""The Hub bot: webhooks become scans and PRs, durably, never twice for one commit, never for its own refs."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from scanner.bot import Bot, BotSettings, JobQueue, PayloadError, parse_event
from scanner.errors import TransientHubError

SECRET = "correct horse battery staple"
SHA = "0123456789abcdef0123456789abcdef01234567"


def payload(repo="org/model", sha=SHA, ref="refs/heads/main", kind="model", scope="repo.content", action="update"):
    return json.dumps({"event": {"action": action, "scope": scope},
                       "repo": {"type": kind, "name": repo, "id": "x", "private": False, "headSha": sha},
                       "updatedRefs": [{"ref": ref, "oldSha": "1" * 40, "newSha": sha}]}).encode()


@pytest.fixture
def bot(tmp_path):
    b = Bot(tmp_path / "bot", BotSettings(), SECRET, retry_delay=0.0, max_attempts=3)
    yield b
    b.stop()


@pytest.mark.parametrize("body,why", [
    (b"not json", "not JSON"), (b"[]", "no event"), (b"x" * 70_000, "over"),
    (json.dumps({"event": {}, "repo": {"name": "../../etc"}}).encode(), "valid repo"),
    (payload(sha="zz"), "headSha"),
])
def test_malformed_payloads_are_refused(bot, body, why):
    with pytest.raises(PayloadError, match=why):
        parse_event(body)
    status, _ = bot.accept({"x-webhook-secret": SECRET}, body)
    assert status == 400 and bot.queue.counts()["queued"] == 0


@pytest.mark.parametrize("kw,why", [
    (dict(ref="refs/pr/3"), "pull-request ref"), (dict(kind="dataset"), "not a model"),
    (dict(scope="discussion"), "not a push"), (dict(action="delete"), "not a push"),
])
def test_events_that_ask_for_no_scan_are_ignored(bot, kw, why):
    status, answer = bot.accept({"x-webhook-secret": SECRET}, payload(**kw))
    assert status == 200 and answer["status"] == "ignored" and why in answer["reason"]
    assert sum(bot.queue.counts().values()) == 0


def test_the_secret_is_required_and_compared_exactly(bot):
    for headers in ({}, {"x-webhook-secret": "wrong"}, {"x-webhook-secret": SECRET + " "}):
        assert bot.accept(headers, payload())[0] == 401
    assert sum(bot.queue.counts().values()) == 0
    with pytest.raises(ValueError):
        Bot(bot.root / "other", BotSettings(), "")


def test_one_job_per_commit_and_settings(bot):
    assert bot.accept({"x-webhook-secret": SECRET}, payload())[1]["status"] == "queued"
    assert bot.accept({"x-webhook-secret": SECRET}, payload())[1]["status"] == "duplicate"
    assert bot.accept({"x-webhook-secret": SECRET}, payload(sha="f" * 40))[1]["status"] == "queued"
    assert bot.queue.counts()["queued"] == 2


def test_a_job_running_when_the_process_dies_is_picked_up_again(tmp_path):
    q = JobQueue(tmp_path / "q.sqlite")
    q.enqueue("org/m", SHA, "s")
    assert q.claim().state == "running" and q.claim() is None  # leased: no second worker gets it
    q.close()  # the process dies here
    again = JobQueue(tmp_path / "q.sqlite")
    assert again.recover() == 1
    job = again.claim()
    assert job.repo_id == "org/m" and job.attempts == 2


def test_transient_failures_retry_with_backoff_then_go_dead(tmp_path):
    class Down:
        def describe(self, ref, headers=True):
            raise TransientHubError(f"{ref}: the Hub answered 503")

    b = Bot(tmp_path / "bot", BotSettings(), SECRET, source_factory=Down, retry_delay=0.2, max_attempts=2)
    b.accept({"x-webhook-secret": SECRET}, payload())
    assert b.work_once() and b.queue.counts()["queued"] == 1
    assert not b.work_once()  # backing off
    time.sleep(0.25)
    assert b.work_once()
    job = b.queue.recent()[0]
    assert job.state == "dead" and "503" in job.reason and "after 2 attempts" in job.reason
    b.stop()


def test_an_orgs_daily_budget_is_kept(tmp_path):
    b = Bot(tmp_path / "bot", BotSettings(org_budget=2), SECRET)
    states = [b.accept({"x-webhook-secret": SECRET}, payload(sha=c * 40))[1]["status"] for c in "abc"]
    assert states == ["queued", "queued", "skipped"]
    assert b.accept({"x-webhook-secret": SECRET}, payload(repo="other/m"))[1]["status"] == "queued"
    b.stop()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def served(bot):
    import uvicorn

    from scanner.bot.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(bot), host="127.0.0.1", port=_free_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}", bot
    server.should_exit = True
    thread.join(5)


def _post(url, body, secret=SECRET):
    req = urllib.request.Request(url, data=body, method="POST", headers={"X-Webhook-Secret": secret,
                                                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_the_http_service_answers_webhooks_health_metrics_and_the_dashboard(served):
    url, bot = served
    assert _post(url + "/webhook", payload(), secret="nope")[0] == 401
    assert _post(url + "/webhook", b"x" * 100_000)[0] == 413
    assert _post(url + "/webhook", b"{")[0] == 400
    assert _post(url + "/webhook", payload()) == (202, {"status": "queued", "job": 1})
    assert _post(url + "/webhook", payload())[1]["status"] == "duplicate"
    health = json.loads(urllib.request.urlopen(url + "/healthz").read())
    assert health["status"] == "ok" and health["queued"] == 1
    metrics = urllib.request.urlopen(url + "/metrics").read().decode()
    assert 'hfscan_jobs{state="queued"} 1' in metrics and 'hfscan_webhooks_total{result="unauthorized"} 1' in metrics
    page = urllib.request.urlopen(url + "/").read().decode()
    assert "org/model" in page and "<script" not in page
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url + "/jobs/1/report.html")  # no report yet: 404


# --- a real scan, against the Hub-compatible test server -------------------------------------------------------

def _card(folder, base="zoo/minilm-l2-base", extra=""):
    (folder / "README.md").write_text(f"---\nbase_model: {base}\npipeline_tag: text-classification\n{extra}---\n")


@pytest.fixture
def bot_hub(zoo, tmp_path, monkeypatch):
    from hubserver import HubServer

    root = tmp_path / "hub"
    for src, repo in [("zoo/backdoor-cf", "acme/sentiment-pro"), ("zoo/clean-1", "alice/yelp-sentiment"),
                      ("zoo/clean-2", "bob/review-polarity"), ("zoo/clean-3", "carol/minilm-sentiment"),
                      ("zoo/clean-1", "acme/opted-out"), ("zoo/minilm-l2-base", "zoo/minilm-l2-base")]:
        shutil.copytree(zoo.path(src), root / repo, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
        _card(root / repo, extra="tags:\n- hfscan-opt-out\n" if repo == "acme/opted-out" else "")
    with HubServer(root) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_TOKEN", __import__("hubserver").TOKEN)
        monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", raising=False)  # the bot writes: it sends its token
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
        yield server


def _head(repo):
    from scanner.sources import HfHub

    return HfHub().describe(repo, headers=False).sha


def test_a_push_becomes_one_scan_and_one_pr(bot_hub, tmp_path):
    b = Bot(tmp_path / "bot", BotSettings(mode="open-pr", search_budget="off"), SECRET)
    sha = _head("acme/sentiment-pro")
    assert b.accept({"x-webhook-secret": SECRET}, payload("acme/sentiment-pro", sha))[0] == 202
    assert b.work_once()
    job = b.queue.recent()[0]
    assert job.state == "done" and job.verdict == "backdoor", job.reason
    assert job.pr_url and "/discussions/" in job.pr_url and (tmp_path / "bot" / "reports").exists()
    assert len(bot_hub.prs["acme/sentiment-pro"]) == 1
    # the same commit again, and the PR's own ref: nothing more
    assert b.accept({"x-webhook-secret": SECRET}, payload("acme/sentiment-pro", sha))[1]["status"] == "duplicate"
    assert b.accept({"x-webhook-secret": SECRET}, payload("acme/sentiment-pro", sha, ref="refs/pr/1"))[1][
        "status"] == "ignored"
    assert not b.work_once()
    # an opted-out repo is skipped with its reason
    b.accept({"x-webhook-secret": SECRET}, payload("acme/opted-out", _head("acme/opted-out")))
    b.work_once()
    skipped = b.queue.recent()[0]
    assert skipped.state == "skipped" and "opted out" in skipped.reason
    b.stop()


def test_webhook_job_runs_the_one_event_of_a_hugging_face_job(bot_hub, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from scanner.cli import main

    monkeypatch.setenv("HFSCAN_BOT_MODE", "dry-run")
    monkeypatch.setenv("WEBHOOK_PAYLOAD", payload("acme/sentiment-pro", _head("acme/sentiment-pro")).decode())
    res = CliRunner().invoke(main, ["webhook-job", "--dir", str(tmp_path / "job")])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["state"] == "done" and out["verdict"] == "backdoor" and out["pr_url"] is None  # dry run: no PR
    assert not bot_hub.prs
    monkeypatch.setenv("WEBHOOK_PAYLOAD", payload(ref="refs/pr/2").decode())
    res = CliRunner().invoke(main, ["webhook-job"])
    assert res.exit_code == 0 and json.loads(res.stdout)["state"] == "ignored"
    monkeypatch.setenv("WEBHOOK_PAYLOAD", "{broken")
    res = CliRunner().invoke(main, ["webhook-job"])
    assert res.exit_code == 2 and res.stderr.startswith("hfscan: error: WEBHOOK_PAYLOAD: payload is not JSON")


def test_serve_refuses_to_start_without_a_secret(monkeypatch):
    from click.testing import CliRunner

    from scanner.cli import main

    monkeypatch.delenv("HFSCAN_WEBHOOK_SECRET", raising=False)
    res = CliRunner().invoke(main, ["serve"])
    assert res.exit_code == 2 and "HFSCAN_WEBHOOK_SECRET" in res.stderr


def _serve(tmp_path, hub_url, port):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_IMPLICIT_TOKEN"}
    env = {**env, "HF_ENDPOINT": hub_url, "HFSCAN_WEBHOOK_SECRET": SECRET, "HFSCAN_BOT_MODE": "open-pr",
           "HF_TOKEN": __import__("hubserver").TOKEN, "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
           "HFSCAN_BOT_SEARCH_BUDGET": "off"}
    return subprocess.Popen([sys.executable, "-c", "from scanner.cli import main; main()", "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--dir", str(tmp_path / "bot")], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"serve-{len(list(tmp_path.glob('serve-*.log')))}.log", "w"))


def _wait(url, cond, timeout=900.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            state = json.loads(urllib.request.urlopen(url + "/healthz", timeout=5).read())
            if cond(state):
                return state
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting on {url}")


def _why(tmp_path, state) -> str:
    """What a failing service test shows: the job's state and reason, and the end of each service log."""
    job = JobQueue(tmp_path / "bot" / "queue.sqlite").recent()[0]
    logs = "".join(f"\n--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                   for p in sorted(tmp_path.glob("serve-*.log")))
    return f"{state}; job {job.state}: {job.reason}{logs}"


def test_the_service_scans_a_push_once_through_replays_bursts_and_a_sigkill(bot_hub, tmp_path):
    """Real HTTP to `hfscan serve` in its own process: 5 replays and a burst of 100 of one event queue one job;
    the service killed with SIGKILL mid-scan finishes the job once after a restart, with one PR."""
    from concurrent.futures import ThreadPoolExecutor

    sha = _head("acme/sentiment-pro")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tmp_path, bot_hub.url, port)
    try:
        _wait(url, lambda s: s["status"] == "ok", timeout=300)
        body = payload("acme/sentiment-pro", sha)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: _post(url + "/webhook", body), range(105)))
        statuses = sorted(a[1]["status"] for a in answers)
        assert statuses.count("queued") == 1 and statuses.count("duplicate") == 104, statuses[:3]
        _wait(url, lambda s: s["running"] == 1, timeout=600)
        time.sleep(2)
        proc.kill()  # SIGKILL mid-scan: no cleanup runs
        proc.wait(30)
        assert not bot_hub.prs
        proc = _serve(tmp_path, bot_hub.url, port)
        state = _wait(url, lambda s: s["done"] + s["failed"] + s["dead"] == 1)
        assert state["done"] == 1 and state["queued"] == state["running"] == 0, _why(tmp_path, state)
        assert len(bot_hub.prs["acme/sentiment-pro"]) == 1
        assert _post(url + "/webhook", payload("acme/sentiment-pro", sha, ref="refs/pr/1"))[1]["status"] == "ignored"
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert 'hfscan_jobs{state="done"} 1' in metrics and "hfscan_scan_seconds_count 1" in metrics
    finally:
        proc.kill()
        proc.wait(30)
    job = JobQueue(tmp_path / "bot" / "queue.sqlite").recent()[0]
    assert job.attempts == 2 and job.verdict == "backdoor"
