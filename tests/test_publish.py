"""Publishing: a PR with the defended weights and the report, once per repo; tokens never leak."""

import json

import pytest
from click.testing import CliRunner

from hubserver import TOKEN
from scanner.cli import main
from test_hub import hub, hub_root, hub_zoo, tiny_factory_session  # noqa: F401  (fixtures)

ARGS = ["check", "acme/sentiment-pro", "--search-budget", "off", "--method", "wag", "--format", "json,md,sarif,html,summary,card"]


@pytest.fixture
def writer(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", raising=False)
    return hub


def test_dry_run_sends_nothing(writer, tmp_path):
    r = CliRunner().invoke(main, [*ARGS, "-o", str(tmp_path), "--open-pr"])
    assert r.exit_code == 1, r.output + r.stderr
    assert "PR (dry-run)" in r.output and "model.safetensors" in r.output and "README.md" in r.output
    assert writer.prs == {} and not [l for l in writer.log if l[0] == "POST"]


def test_open_pr_twice_gives_one_pr_that_loads_as_the_defended_model(writer, tmp_path):
    from huggingface_hub import snapshot_download
    from scanner.families.classifier.model import Classifier
    from scanner.families.classifier.data import builtin
    from scanner.families.classifier.metrics import attack_success_rate
    from scanner.probe.triggers import Trigger

    r1 = CliRunner().invoke(main, [*ARGS, "-o", str(tmp_path / "a"), "--open-pr", "--yes"])
    assert r1.exit_code == 1, r1.stderr[-300:] + str([l for l in writer.log if l[0] != "GET" or "discussions" in l[1]][-8:])
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["publish"]["pr"]["action"] == "opened" and rep["publish"]["pr"]["num"] == 1
    r2 = CliRunner().invoke(main, [*ARGS, "-o", str(tmp_path / "b"), "--open-pr", "--yes"])
    assert r2.exit_code == 1, r2.output + r2.stderr
    rep2 = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep2["publish"]["pr"]["action"] == "updated" and rep2["publish"]["pr"]["num"] == 1
    assert len(writer.prs["acme/sentiment-pro"]) == 1  # never a second PR
    pr = writer.prs["acme/sentiment-pro"][0]
    assert "<!-- hfscan:pr target=acme/sentiment-pro -->" in pr["description"]
    assert set(pr["files"]) == {"README.md", "model.safetensors"}  # config and tokenizer untouched
    assert len(pr["comments"]) == 2 and "Rescanned" in pr["comments"][1]
    # the PR revision loads in transformers and is the defended model
    path = snapshot_download("acme/sentiment-pro", revision="refs/pr/1", cache_dir=str(tmp_path / "dl"), endpoint=writer.url)
    card = open(f"{path}/README.md").read()
    assert card.count("<!-- hfscan:start -->") == 1 and "base_model: zoo/minilm-l2-base" in card
    texts = builtin("sentiment").texts
    clf = Classifier.load(path)
    f = rep2["findings"][0]
    asr, _ = attack_success_rate(clf, texts, clf.predict(texts), Trigger(f["trigger"]), f["target_label_id"],
                                 f["position"], limit=160)
    assert abs(asr - f["asr_after"]) < 1e-3 and asr < f["asr_before"] / 2


def test_a_new_commit_updates_the_open_pr(writer, tmp_path, hub_root):
    r1 = CliRunner().invoke(main, [*ARGS, "-o", str(tmp_path / "a"), "--open-pr", "--yes", "--no-defend",
                                   "--pr-mode", "report-only"])
    assert r1.exit_code == 1, r1.output + r1.stderr
    sha1 = json.loads((tmp_path / "a" / "report.json").read_text())["target"]["sha"]
    card = hub_root / "acme/sentiment-pro" / "README.md"
    old = card.read_text()
    card.write_text(old + "\nA new paragraph by the author.\n")  # a new commit on main
    try:
        r2 = CliRunner().invoke(main, [*ARGS, "-o", str(tmp_path / "b"), "--open-pr", "--yes", "--no-defend",
                                       "--pr-mode", "report-only"])
        assert r2.exit_code == 1, r2.output + r2.stderr
        rep2 = json.loads((tmp_path / "b" / "report.json").read_text())
    finally:
        card.write_text(old)
    assert rep2["target"]["sha"] != sha1
    prs = writer.prs["acme/sentiment-pro"]
    assert len(prs) == 1 and rep2["publish"]["pr"]["action"] == "updated"
    assert rep2["target"]["sha"] in prs[0]["comments"][-1]
    assert "A new paragraph by the author." in prs[0]["files"]["README.md"].decode()


def test_report_only_pr_changes_only_the_card(writer, tmp_path):
    r = CliRunner().invoke(main, [*ARGS, "-o", str(tmp_path), "--open-pr", "--pr-mode", "report-only", "--yes",
                                  "--no-defend"])
    assert r.exit_code == 1, r.output + r.stderr
    assert set(writer.prs["acme/sentiment-pro"][0]["files"]) == {"README.md"}


def test_push_variant_creates_a_loadable_repo(writer, tmp_path, hub_root):
    r = CliRunner().invoke(main, [*ARGS, "-o", str(tmp_path), "--push-variant", "hfscan-bot/sentiment-pro-defended",
                                  "--yes"])
    assert r.exit_code == 1, r.output + r.stderr
    repo = hub_root / "hfscan-bot/sentiment-pro-defended"
    assert (repo / "model.safetensors").exists() and "base_model_relation: merge" in (repo / "README.md").read_text()


def test_token_never_appears_in_outputs(writer, tmp_path):
    r = CliRunner().invoke(main, [*ARGS, "-o", str(tmp_path), "--open-pr", "--yes"])
    assert r.exit_code == 1
    assert TOKEN not in r.output + r.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md", ".sarif", ".html"):
            assert TOKEN not in f.read_text(errors="ignore"), f


def test_github_issue_twice_gives_one_issue(zoo, tmp_path, monkeypatch):
    from githubserver import TOKEN as GH_TOKEN, GitHubServer

    with GitHubServer() as gh:
        monkeypatch.setenv("GITHUB_API_URL", gh.url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_TOKEN)
        args = ["check", str(zoo.path("zoo/backdoor-cf")), "--peer", str(zoo.path("zoo/clean-1")), "--peer",
                str(zoo.path("zoo/clean-2")), "--search-budget", "off", "--no-defend", "--github-issue", "acme/models",
                "--yes"]
        for i in range(2):
            r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / str(i))])
            assert r.exit_code == 1, r.output + r.stderr
            assert GH_TOKEN not in r.output + r.stderr
        issues = gh.issues["acme/models"]
        assert len(issues) == 1 and "backdoor" in issues[0]["title"] and "`cf`" in issues[0]["body"]
        rep = json.loads((tmp_path / "1" / "report.json").read_text())
        assert rep["publish"]["github_issue"]["action"] == "updated"


def test_a_pr_refused_for_want_of_a_token_says_why_in_one_line(writer, tmp_path, monkeypatch):
    """HF_HUB_DISABLE_IMPLICIT_TOKEN keeps huggingface_hub from sending HF_TOKEN: the 401 line names it."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # read at import
    r = CliRunner().invoke(main, [*ARGS, "-o", str(tmp_path), "--open-pr", "--pr-mode", "report-only", "--yes",
                                  "--no-defend"])
    assert r.exit_code == 2 and writer.prs == {}, r.output + r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("hfscan: error:") and "401" in line and "HF_HUB_DISABLE_IMPLICIT_TOKEN is set" in line
    assert "Traceback" not in r.stderr


def test_a_variant_that_keeps_the_backdoor_is_not_proposed(writer, tmp_path):
    """A defense that leaves a found trigger at backdoor strength (here WAG with the target at weight 100) is
    no defense: the report says so and the PR carries the report, not the weights."""
    r = CliRunner().invoke(main, [*ARGS, "--weights", "100,1,1,1", "-o", str(tmp_path), "--open-pr"])
    assert r.exit_code == 1, r.output + r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["defense"]["ineffective"] is True and rep["defense"]["asr_max_after"] >= 0.8
    assert "does not remove the backdoor" in rep["defense"]["note"]
    assert "does not remove the backdoor" in (tmp_path / "report.md").read_text()
    assert "model.safetensors" not in r.output and "README.md" in r.output
    assert "carries the report only" in r.output + r.stderr and "backdoor strength" in r.output + r.stderr
