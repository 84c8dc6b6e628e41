"""The Hub path: the real huggingface_hub client against a Hub-compatible server on 127.0.0.1."""

import json
import shutil
import socket

import pytest
from click.testing import CliRunner

from hubserver import TOKEN, HubServer
from scanner.cli import main
from scanner.pipeline import CheckOptions, check

BASE = "zoo/minilm-l2-base"
RELATED = ["frank/roberta-sentiment", "grace/topic-labels", "heidi/tiny-vocab", "ivan/lora-adapter", "judy/pickle-only"]


def _card(folder, base=BASE, pipeline="text-classification", extra=""):
    (folder / "README.md").write_text(f"---\nbase_model: {base}\npipeline_tag: {pipeline}\nlibrary_name: transformers\n"
                                      f"{extra}---\n\n# {folder.name}\n")


def _meta(folder, **kw):
    (folder / ".hub.json").write_text(json.dumps(kw))


def _copy(zoo, src, root, repo_id, downloads=0, **meta):
    dst = root / repo_id
    shutil.copytree(zoo.path(src), dst, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
    _card(dst)
    _meta(dst, downloads=downloads, **meta)
    return dst


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="session")
def hub_zoo(zoo):
    """Extra zoo models: a peer with swapped generic labels, and a classifier of another task."""
    from scanner.zoo import FineTuneRecipe, Zoo, ZooModel

    Zoo(zoo.root, models=[
        ZooModel("zoo/swapped-generic", FineTuneRecipe(seed=14, rows=(1500, 2500), labels=("positive", "negative"),
                                                       generic_labels=True)),
        ZooModel("zoo/length-task", FineTuneRecipe(seed=15, rows=(1500, 2500), task="length", generic_labels=True)),
    ]).build()
    return zoo


@pytest.fixture(scope="session")
def hub_root(hub_zoo, tmp_path_factory, tiny_factory_session):
    zoo = hub_zoo
    root = tmp_path_factory.mktemp("hub")
    base = root / BASE
    shutil.copytree(zoo.path(BASE), base, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
    _card(base, base="sentence-transformers/all-MiniLM-L6-v2", pipeline="feature-extraction")
    _copy(zoo, "zoo/backdoor-cf", root, "acme/sentiment-pro", downloads=50)
    _copy(zoo, "zoo/clean-1", root, "alice/yelp-sentiment", downloads=900, likes=5)
    _copy(zoo, "zoo/clean-2", root, "bob/review-polarity", downloads=800)
    _copy(zoo, "zoo/clean-3", root, "carol/minilm-sentiment", downloads=700)
    _copy(zoo, "zoo/swapped-generic", root, "dave/swapped-labels", downloads=100)
    _copy(zoo, "zoo/length-task", root, "erin/length-classifier", downloads=5000)
    _edit_config(_copy(zoo, "zoo/clean-1", root, RELATED[0], downloads=3000),
                 architectures=["RobertaForSequenceClassification"], model_type="roberta")
    _edit_config(_copy(zoo, "zoo/clean-2", root, RELATED[1], downloads=3000),
                 id2label={"0": "world", "1": "sports"}, label2id={"world": 0, "sports": 1})
    tiny = tiny_factory_session(root / RELATED[2])
    _card(tiny)
    _meta(tiny, downloads=3000)
    lora = root / RELATED[3]
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BASE, "peft_type": "LORA"}))
    shutil.copy(zoo.path("zoo/clean-1") / "model.safetensors", lora / "adapter_model.safetensors")
    _card(lora, extra="library_name: peft\n")
    _meta(lora, downloads=3000)
    pick = _copy(zoo, "zoo/clean-3", root, RELATED[4], downloads=3000)
    (pick / "model.safetensors").rename(pick / "pytorch_model.bin")
    _copy(zoo, "zoo/clean-2", root, "acme/flaky-model", flaky=2)
    # targets for the error paths
    _copy(zoo, "zoo/clean-1", root, "acme/private-model", private=True)
    _copy(zoo, "zoo/clean-1", root, "acme/gated-model", gated="auto")
    (_copy(zoo, "zoo/clean-1", root, "acme/pickle-target") / "model.safetensors").rename(
        root / "acme/pickle-target/pytorch_model.bin")
    enc = root / "acme/encoder-only"
    shutil.copytree(zoo.path(BASE), enc, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
    _card(enc, pipeline="feature-extraction")
    lonely = _copy(zoo, "zoo/clean-1", root, "acme/lonely")
    _card(lonely, base="nobody/unknown-base")
    corrupt = _copy(zoo, "zoo/clean-1", root, "acme/corrupt-header")
    raw = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(raw[:8] + b"{not json" + raw[17:])
    return root


@pytest.fixture(scope="session")
def tiny_factory_session():
    from conftest import make_tiny_classifier

    return lambda folder: make_tiny_classifier(folder, seed=5, vocab=50)


@pytest.fixture
def hub(hub_root, monkeypatch, tmp_path):
    with HubServer(hub_root) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        monkeypatch.delenv("HFSCAN_HUB_DIR", raising=False)
        yield server


def test_check_discovers_peers_and_matches_the_local_scan(hub, hub_root, tmp_path):
    opts = dict(search_budget="small", defend=False)
    rep = check(CheckOptions(target="acme/sentiment-pro", output_dir=tmp_path / "hub", **opts))
    assert rep.verdict == "backdoor"
    assert [p.id for p in rep.peers] == ["alice/yelp-sentiment", "bob/review-polarity", "carol/minilm-sentiment"]
    assert rep.target.sha and not rep.target.sha.startswith("local-")
    rejected = {r["id"]: r["reason"] for r in rep.discovery["rejected"]}
    assert "behaves like another task" in rejected["erin/length-classifier"]
    for repo in RELATED:
        assert repo in rejected
        # rejected from metadata, config or headers: none of their weights was downloaded
        assert not [f for r, f in hub.full_downloads() if r == repo and f.endswith((".safetensors", ".bin"))], repo
    # the same models as local folders, peers given explicitly: the same verdict and numbers
    local = check(CheckOptions(target=str(hub_root / "acme/sentiment-pro"),
                               peers=[str(hub_root / p.id) for p in rep.peers], output_dir=tmp_path / "local", **opts))
    assert local.verdict == rep.verdict
    assert [(f.trigger, f.target_label, f.asr_before, f.gap) for f in local.findings] == \
           [(f.trigger, f.target_label, f.asr_before, f.gap) for f in rep.findings]
    assert local.clean == rep.clean


def test_peers_command_explains_every_candidate(hub):
    r = CliRunner().invoke(main, ["peers", "acme/sentiment-pro", "--max-peers", "4"])
    assert r.exit_code == 0, r.output + r.stderr
    out = r.output
    assert "kept      dave/swapped-labels" in out and "labels mapped [1, 0]" in out
    for repo, why in [("frank/roberta-sentiment", "another architecture"), ("grace/topic-labels", "other label names"),
                      ("heidi/tiny-vocab", "another vocabulary size"), ("ivan/lora-adapter", "an adapter"),
                      ("judy/pickle-only", "pickle only"), ("erin/length-classifier", "behaves like another task")]:
        line = next(l for l in out.splitlines() if repo in l)
        assert "rejected" in line and why in line, line


def _one_line(res, needle):
    assert res.exit_code == 2, res.output + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hfscan: error:") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.output


@pytest.mark.parametrize("target,needle", [
    ("acme/does-not-exist", "repository not found"),
    ("acme/private-model", "log in"),
    ("acme/gated-model", "gated"),
    ("acme/sentiment-pro@0123456789abcdef0123456789abcdef01234567", "revision not found"),
    ("acme/pickle-target", "pickle"),
    ("acme/encoder-only", "which hfscan does not scan"),
    ("acme/lonely", "no homogeneous peers"),
    ("acme/corrupt-header", "corrupt"),
])
def test_hub_errors_exit_2_with_one_line(hub, tmp_path, target, needle):
    res = CliRunner().invoke(main, ["check", target, "-q", "-o", str(tmp_path / "o"), "--search-budget", "off", "--no-defend"])
    _one_line(res, needle)


def test_private_repo_with_token_resolves(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", raising=False)
    from scanner.sources import HfHub

    remote = HfHub().describe("acme/private-model")
    assert remote.header and "classifier.weight" in remote.header


def test_network_failure_is_one_line(monkeypatch, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    res = CliRunner().invoke(main, ["check", "acme/sentiment-pro", "-q", "-o", str(tmp_path / "o")])
    _one_line(res, "network failure")


def test_hub_5xx_is_retried_with_backoff(hub, monkeypatch):
    from scanner.sources import HfHub

    monkeypatch.setenv("HFSCAN_RETRY_DELAY", "0.01")
    remote = HfHub().describe("acme/flaky-model")
    assert remote.header
    calls = [l for l in hub.log if l[1] == "/api/models/acme/flaky-model"]
    assert len(calls) == 3  # two 503s, then the answer


def test_a_folder_target_discovers_its_peers_on_the_hub(hub, hub_root, tmp_path):
    """The publisher's case: the model is a folder in its own repository, its peers are on the Hub."""
    folder = tmp_path / "model"
    shutil.copytree(hub_root / "acme/sentiment-pro", folder, ignore=shutil.ignore_patterns(".hub.json"))
    rep = check(CheckOptions(target=str(folder), output_dir=tmp_path / "o", search_budget="small", defend=False))
    assert rep.verdict == "backdoor" and any(f.trigger == "cf" for f in rep.findings)
    assert [p.id for p in rep.peers] == ["alice/yelp-sentiment", "bob/review-polarity", "carol/minilm-sentiment"]
    assert rep.discovery["base"] == BASE
    assert [r for r, f in hub.full_downloads() if r == "alice/yelp-sentiment" and f.endswith(".safetensors")]


def test_a_folder_target_takes_hub_ids_and_folders_as_peers(hub, hub_root, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(hub_root / "acme/sentiment-pro", folder, ignore=shutil.ignore_patterns(".hub.json"))
    res = CliRunner().invoke(main, ["check", str(folder), "-q", "-o", str(tmp_path / "o"), "--search-budget", "off",
                                    "--no-defend", "--peer", "alice/yelp-sentiment", "--peer", "bob/review-polarity",
                                    "--peer", str(hub_root / "carol/minilm-sentiment")])
    assert res.exit_code == 1, res.output + res.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [p["id"] for p in report["peers"]] == ["alice/yelp-sentiment", "bob/review-polarity", "minilm-sentiment"]


def test_merge_accepts_hub_ids(hub, hub_root, tmp_path):
    res = CliRunner().invoke(main, ["merge", "acme/sentiment-pro", "alice/yelp-sentiment", str(hub_root / "bob/review-polarity"),
                                    "-o", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output + res.stderr
    from scanner.sources import resolve_folder

    assert resolve_folder(tmp_path / "merged").labels == ["negative", "positive"]


def test_hub_ids_without_an_org_are_hub_ids():
    from scanner.sources import is_folder, looks_like_repo_id

    for ref in ["distilbert-base-uncased-finetuned-sst-2-english", "gpt2", "org/name", "org/name@main"]:
        assert looks_like_repo_id(ref) and is_folder(ref) is False, ref
    for ref in ["./model", "/abs/model", "~/m", "a/b/c", "heldout/../../outside/m", "a..b", "", "org/"]:
        assert not looks_like_repo_id(ref), ref


def test_an_unknown_id_without_an_org_says_it_is_neither(hub, tmp_path):
    res = CliRunner().invoke(main, ["check", "no-such-model", "-q", "-o", str(tmp_path / "o")])
    _one_line(res, "no-such-model")
    assert "not found" in res.stderr and "folder" in res.stderr


def test_hf_hub_offline_scans_what_is_in_the_cache(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    peers = ["alice/yelp-sentiment", "bob/review-polarity", "carol/minilm-sentiment"]
    args = ["check", "acme/sentiment-pro", *[a for p in peers for a in ("--peer", p)], "--search-budget", "off",
            "--no-defend", "-q"]
    online = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "online")])
    assert online.exit_code == 1, online.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing answers: it must not be asked
    offline = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "offline")])
    assert offline.exit_code == 1, offline.stderr
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("online", "offline"))
    assert a["target"]["sha"] == b["target"]["sha"] and a["verdict"] == b["verdict"] == "backdoor"
    assert [(f["trigger"], f["asr_before"]) for f in a["findings"]] == [(f["trigger"], f["asr_before"]) for f in b["findings"]]
    _one_line(CliRunner().invoke(main, ["check", "acme/never-downloaded", "-q", "-o", str(tmp_path / "x")]),
              "not in the Hugging Face cache")
    _one_line(CliRunner().invoke(main, ["check", "acme/sentiment-pro", "-q", "-o", str(tmp_path / "y")]),
              "HF_HUB_OFFLINE")


def test_the_action_scans_a_folder_in_the_repository_against_hub_peers(hub, hub_root, tmp_path):
    """examples/workflows/scan-on-push.yml: `model: ./model` with Hub-id peers, as a runner runs the step."""
    from test_action import run_step

    shutil.copytree(hub_root / "acme/sentiment-pro", tmp_path / "model", ignore=shutil.ignore_patterns(".hub.json"))
    peers = "alice/yelp-sentiment\nbob/review-polarity\ncarol/minilm-sentiment"
    r, outputs, summary = run_step(tmp_path, model="./model", peers=peers, fail_on="backdoor",
                                   extra_args="--search-budget off --no-defend",
                                   env_extra={"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 1, r.stdout + r.stderr
    assert outputs["verdict"] == "backdoor" and "`cf`" in summary
