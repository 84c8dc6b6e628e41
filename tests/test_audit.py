"""Org-wide audits against the test Hub server: rows for every model, cache by commit, resume, shards."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from hubserver import HubServer
from scanner.audit import AuditOptions, load_audit, merge_audits, run_audit, shard_of
from test_hub import BASE, _card, _copy, _meta

ORG = ["acme/sentiment-pro", "acme/yelp-a", "acme/pickle-only", "acme/ner-model", "acme/corrupt-header",
       "acme/missing-file", "acme/gated-no-access", "acme/encoder", "acme/broken-config"]


@pytest.fixture(scope="module")
def audit_root(zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-hub")
    shutil.copytree(zoo.path(BASE), root / BASE, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
    _card(root / BASE, base="sentence-transformers/all-MiniLM-L6-v2", pipeline="feature-extraction")
    for i, src in enumerate(["zoo/clean-1", "zoo/clean-2", "zoo/clean-3"]):
        _copy(zoo, src, root, f"peer{i}/sentiment", downloads=1000 - i)
    _copy(zoo, "zoo/backdoor-cf", root, "acme/sentiment-pro", downloads=10)
    # a clean fine-tune of its own (a byte copy of a peer would be set aside as the peer's twin): clean-1 plus noise
    from test_hardening import _noisy_copy

    _noisy_copy(zoo.path("zoo/clean-1"), root / "acme/yelp-a", 0.03)
    _card(root / "acme/yelp-a")
    _meta(root / "acme/yelp-a", downloads=5)
    pick = _copy(zoo, "zoo/clean-2", root, "acme/pickle-only")
    (pick / "model.safetensors").rename(pick / "pytorch_model.bin")
    _card(_copy(zoo, "zoo/clean-2", root, "acme/ner-model"), pipeline="token-classification")
    corrupt = _copy(zoo, "zoo/clean-2", root, "acme/corrupt-header")
    raw = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(raw[:8] + b"{broken" + raw[15:])
    _meta(_copy(zoo, "zoo/clean-2", root, "acme/missing-file"), missing=["tokenizer.json"])
    (_copy(zoo, "zoo/clean-2", root, "acme/broken-config") / "config.json").write_text('{"architectures": [')
    _meta(_copy(zoo, "zoo/clean-2", root, "acme/gated-no-access"), gated="manual")
    shutil.copytree(zoo.path(BASE), root / "acme/encoder", ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
    _card(root / "acme/encoder", pipeline="feature-extraction")
    return root


@pytest.fixture
def server(audit_root, monkeypatch, tmp_path):
    with HubServer(audit_root) as s:
        monkeypatch.setenv("HF_ENDPOINT", s.url)
        monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HFSCAN_HUB_DIR", raising=False)
        yield s


def opts(tmp, cache, **kw):
    return AuditOptions(orgs=["acme"], output_dir=tmp, cache=cache, search_budget="off", defend=False, **kw)


@pytest.fixture(scope="module")
def first_run(audit_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit1")
    with HubServer(audit_root) as s:
        before = os.environ["HF_ENDPOINT"], os.environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN")
        os.environ["HF_ENDPOINT"] = s.url
        os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
        try:
            report = run_audit(opts(tmp / "out", tmp / "cache.sqlite"))
        finally:  # restore both: a leaked variable reaches every later subprocess (the bot test's `hfscan serve`)
            os.environ["HF_ENDPOINT"] = before[0]
            os.environ.pop("HF_HUB_DISABLE_IMPLICIT_TOKEN")
            if before[1] is not None:
                os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = before[1]
    return report, tmp


def test_every_model_gets_a_row_and_the_worst_verdict_sets_the_exit_code(first_run):
    report, tmp = first_run
    rows = {r.repo_id: r for r in report.rows}
    assert sorted(rows) == sorted(ORG)
    assert rows["acme/sentiment-pro"].verdict == "backdoor"
    assert rows["acme/yelp-a"].verdict == "no_trigger_found" and len(rows["acme/yelp-a"].peers) == 3
    assert rows["acme/pickle-only"].verdict == "skipped" and "pickle" in rows["acme/pickle-only"].reason
    assert rows["acme/ner-model"].verdict == "skipped" and "token-classification" in rows["acme/ner-model"].reason
    assert rows["acme/encoder"].verdict == "skipped"
    for broken in ("acme/corrupt-header", "acme/missing-file", "acme/gated-no-access", "acme/broken-config"):
        assert rows[broken].verdict in ("error", "skipped") and rows[broken].reason, broken
    assert report.exit_code == 1
    d = json.loads((tmp / "out" / "audit.json").read_text())
    assert d["counts"]["backdoor"] == 1 and (tmp / "out" / "audit.md").exists() and (tmp / "out" / "audit.html").exists()
    assert (tmp / "out" / rows["acme/sentiment-pro"].report).exists()


@pytest.mark.parametrize("keep", [False, True])
def test_audit_downloads_stay_in_its_run_cache(server, tmp_path, monkeypatch, keep):
    hf_home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    models = tmp_path / "models.txt"
    models.write_text("acme/yelp-a\n")
    out = tmp_path / "out"
    report = run_audit(AuditOptions(models_file=str(models), output_dir=out, cache=tmp_path / "c.sqlite",
                                    search_budget="off", defend=False, keep_downloads=keep))
    assert [r.verdict for r in report.rows] == ["no_trigger_found"] and len(report.rows[0].peers) == 3
    assert [f for _, f in server.full_downloads() if f.endswith(".safetensors")]  # it did download weights
    assert not list(hf_home.rglob("*.safetensors"))  # ... but never into the user's Hugging Face cache
    kept = list((out / "downloads").rglob("*.safetensors"))
    assert bool(kept) == keep
    assert not [p for p in out.iterdir() if p.name.startswith(".downloads-")]


def test_second_run_rescans_nothing(first_run, server):
    _, tmp = first_run
    again = run_audit(opts(tmp / "out2", tmp / "cache.sqlite"))
    assert not [f for _, f in server.full_downloads() if f.endswith(".safetensors")]
    scanned = [r.repo_id for r in again.rows if r.verdict in ("backdoor", "no_trigger_found")]
    assert len(scanned) == 2 and all(r.cached for r in again.rows if r.repo_id in scanned)


def test_killed_audit_resumes_to_the_same_result(first_run, server, tmp_path):
    report, _ = first_run
    cache = tmp_path / "cache.sqlite"
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
    cmd = [sys.executable, "-m", "scanner.cli", "audit", "acme", "-o", str(tmp_path / "out"), "--cache", str(cache),
           "--search-budget", "off", "--no-defend"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if cache.exists():
            try:
                if sqlite3.connect(str(cache)).execute("SELECT COUNT(*) FROM scans").fetchone()[0] >= 1:
                    break
            except sqlite3.Error:
                pass
        time.sleep(0.2)
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.wait()
    done_before = sqlite3.connect(str(cache)).execute("SELECT COUNT(*) FROM scans").fetchone()[0]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stderr[-2000:]
    resumed = load_audit(tmp_path / "out" / "audit.json")
    assert resumed.comparable() == report.comparable()
    assert done_before >= 1 and (not killed or any(row.cached for row in resumed.rows))


def test_shards_cover_every_model_once_and_merge_to_the_whole(first_run, server, tmp_path):
    report, tmp = first_run
    parts = []
    for i in (1, 2, 3):
        part = run_audit(opts(tmp_path / f"s{i}", tmp / "cache.sqlite", shard=(i, 3)))
        assert all(shard_of(r.repo_id, 3) == i for r in part.rows)
        parts.append(part)
    ids = [r.repo_id for p in parts for r in p.rows]
    assert sorted(ids) == sorted(ORG)
    merged = merge_audits([tmp_path / f"s{i}" / "audit.json" for i in (1, 2, 3)], tmp_path / "merged")
    assert merged.comparable() == report.comparable()
    assert json.loads((tmp_path / "merged" / "audit.json").read_text())["shard"] == "merged"


def test_a_new_commit_rescans_only_that_model(first_run, server, audit_root):
    _, tmp = first_run
    readme = audit_root / "acme/yelp-a" / "README.md"
    readme.write_text(readme.read_text() + "\nA new line in the card.\n")
    third = run_audit(opts(tmp / "out3", tmp / "cache.sqlite"))
    fresh = [r.repo_id for r in third.rows if r.verdict in ("backdoor", "no_trigger_found") and not r.cached]
    assert fresh == ["acme/yelp-a"]


def test_audit_issue_is_created_once_and_updated(first_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from githubserver import TOKEN as GH_TOKEN, GitHubServer
    from scanner.cli import main

    _, tmp = first_run
    with GitHubServer() as gh:
        monkeypatch.setenv("GITHUB_API_URL", gh.url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_TOKEN)
        for i in range(2):
            r = CliRunner().invoke(main, ["audit", "merge", str(tmp / "out" / "audit.json"), "-o", str(tmp_path / f"m{i}"),
                                          "--github-issue", "acme/security", "--yes"])
            assert r.exit_code == 1, r.output + r.stderr
        issues = gh.issues["acme/security"]
        assert len(issues) == 1 and "1 backdoor" in issues[0]["title"] and "acme/sentiment-pro" in issues[0]["body"]
