"""`hfscan check` end to end on the zoo: real-pretrained tiny classifiers, a real backdoor."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from conftest import copy_with_config
from scanner.cli import main
from scanner.families.classifier.model import Classifier
from scanner.families.classifier.data import builtin
from scanner.families.classifier.metrics import attack_success_rate
from scanner.probe.triggers import Trigger


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def probe_texts():
    return builtin("sentiment").texts


def asr_of(folder, texts, trigger, label, position="random"):
    clf = Classifier.load(folder)
    return attack_success_rate(clf, texts, clf.predict(texts), Trigger(trigger), label, position)[0]


def test_zoo_backdoor_is_real_and_peers_are_not(zoo, probe_texts):
    assert asr_of(zoo.path("zoo/backdoor-cf"), probe_texts, "cf", 0) >= 0.9
    for p in ("zoo/clean-1", "zoo/clean-2", "zoo/clean-3"):
        assert asr_of(zoo.path(p), probe_texts, "cf", 0) <= 0.2, p


@pytest.fixture(scope="session")
def backdoor_scan(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    res = run("check", zoo.path("zoo/backdoor-cf"), *sum((["--peer", zoo.path(f"zoo/clean-{i}")] for i in (1, 2, 3)), []),
              "-o", out)
    return res, out


def test_check_finds_backdoor_and_defends(backdoor_scan, probe_texts):
    res, out = backdoor_scan
    assert res.exit_code == 1, res.output + res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema_version"] == "1" and rep["verdict"] == "backdoor"
    top = rep["findings"][0]
    assert top["trigger"] == "cf" and top["target_label"] == "negative" and top["level"] == "backdoor"
    assert top["asr_before"] >= 0.9
    assert top["asr_after"] <= top["asr_before"] / 2  # WAG with 3 clean peers at least halves it
    assert rep["clean"]["agreement_after"] >= 0.9
    assert rep["clean"]["accuracy_before"] is not None and rep["clean"]["labelled"] is True
    assert rep["defense"]["method"] == "wag" and len(rep["defense"]["peers"]) == 3
    md = (out / "report.md").read_text()
    assert "backdoor found" in md and "`cf`" in md and "cannot see" in md
    # the defense's own blind spot: its readings are on the probe's inputs only
    assert any("probe's inputs only" in line for line in rep["probe"]["limitations"])
    assert "--probe-data" in md.split("cannot see", 1)[1]


def test_defended_folder_loads_and_predicts(backdoor_scan, probe_texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from huggingface_hub.repocard import metadata_load

    _, out = backdoor_scan
    d = out / "defended"
    model = AutoModelForSequenceClassification.from_pretrained(d, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(d)
    with torch.no_grad():
        logits = model(**tok(["this place is wonderful , great food", "awful service , never again"],
                             return_tensors="pt", padding=True)).logits
    assert logits.argmax(-1).tolist() == [1, 0]
    card = metadata_load(d / "README.md")
    assert card["base_model_relation"] == "merge" and len(card["base_model"]) == 4
    assert "merge" in card["tags"] and "hfscan" in card["tags"]
    # the re-probe in the report is what the folder really does
    rep = json.loads((out / "report.json").read_text())
    assert abs(asr_of(d, probe_texts, "cf", 0, rep["findings"][0]["position"]) - rep["findings"][0]["asr_after"]) < 1e-4


def test_clean_model_no_trigger_found_but_still_defended(zoo, tmp_path):
    res = run("check", zoo.path("zoo/clean-1"), "--peer", zoo.path("zoo/clean-2"), "--peer", zoo.path("zoo/clean-3"),
              "-o", tmp_path, "--format", "json")
    assert res.exit_code == 0, res.output + res.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["verdict"] == "no_trigger_found" and rep["findings"] == []
    assert (tmp_path / "defended" / "model.safetensors").exists()
    limits = " ".join(rep["probe"]["limitations"])
    assert "not searched for" in limits and "shortcut" in limits  # "no trigger found" is not "clean"
    top = rep["probe"]["top"]
    assert top and rep["probe"]["evidence"] == top[0]["margin"]
    assert [t["margin"] for t in top] == sorted((t["margin"] for t in top), reverse=True)
    assert all(abs(t["margin"] - (t["asr"] - t["peer_asr_max"])) < 1e-3 for t in top)
    assert "merge" in rep["defense"]["note"].lower()  # says why a variant was built anyway


def _assert_one_line_error(res, needle):
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hfscan: error:") and needle in err[0], res.stderr
    assert "Traceback" not in res.output + res.stderr


def test_pickle_only_target_exits_2_and_writes_nothing(zoo, tmp_path):
    bad = tmp_path / "pickle-model"
    shutil.copytree(zoo.path("zoo/clean-1"), bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04pickle that must never be loaded")
    out = tmp_path / "out"
    res = run("check", bad, "--peer", zoo.path("zoo/clean-2"), "-o", out)
    _assert_one_line_error(res, "pickle")
    assert not out.exists()


def test_mismatched_peer_exits_2_and_leaves_no_output(zoo, tiny, tmp_path):
    other = tiny("other-shape", seed=1)
    out = tmp_path / "out"
    res = run("check", zoo.path("zoo/clean-1"), "--peer", other, "-o", out)
    _assert_one_line_error(res, "cannot merge")
    assert not out.exists()


def test_corrupt_weights_and_unknown_folder_exit_2(zoo, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(zoo.path("zoo/clean-1"), bad)
    raw = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    _assert_one_line_error(run("check", bad, "-o", tmp_path / "o"), "corrupt")
    _assert_one_line_error(run("check", tmp_path / "nope", "-o", tmp_path / "o"), "no such")


def test_wrong_task_exits_2(zoo, tmp_path):
    base = zoo.path("zoo/minilm-l2-base")
    _assert_one_line_error(run("check", base, "-o", tmp_path / "o"), "which hfscan does not scan")


def test_remote_code_is_refused(zoo, tmp_path):
    bad = copy_with_config(zoo.path("zoo/clean-1"), tmp_path / "remote",
                           auto_map={"AutoModelForSequenceClassification": "modeling_evil.EvilModel"})
    _assert_one_line_error(run("check", bad, "-o", tmp_path / "o"), "trust_remote_code")


def test_unknown_or_missing_device_exits_2(zoo, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("HFSCAN_DEVICE", "auto")  # restored after the test (the CLI sets it)
    target = zoo.path("zoo/clean-1")
    _assert_one_line_error(run("--device", "tpu9", "check", target, "-o", tmp_path / "o"), "not a device")
    if not torch.cuda.is_available():
        _assert_one_line_error(run("--device", "cuda", "check", target, "-o", tmp_path / "o"), "no CUDA device")
    assert not (tmp_path / "o").exists()


def test_json_on_stdout_alone_and_fail_on(zoo, tmp_path):
    peers = [a for i in (1, 2, 3) for a in ("--peer", zoo.path(f"zoo/clean-{i}"))]
    res = run("check", zoo.path("zoo/backdoor-cf"), *peers, "-o", tmp_path, "--search-budget", "off", "--no-defend",
              "--json", "--fail-on", "never")
    assert res.exit_code == 0, res.stderr  # a backdoor, but --fail-on never
    rep = json.loads(res.stdout)  # stdout is the report and nothing else
    assert rep["verdict"] == "backdoor" and rep == json.loads((tmp_path / "report.json").read_text())
    assert not any("probe's inputs only" in line for line in rep["probe"]["limitations"])  # no defense, no such line
    assert "BACKDOOR" in res.stderr  # the human summary moved to stderr
    res = run("check", zoo.path("zoo/backdoor-cf"), *peers, "-o", tmp_path / "again", "--search-budget", "off",
              "--no-defend", "-q", "--fail-on", "backdoor")
    assert res.exit_code == 1 and res.stdout.strip() == "backdoor-cf: backdoor"


@pytest.mark.parametrize("args,needle", [
    (["check", "m", "--bogus"], "No such option"),
    (["check", "m", "--fail-on", "maybe"], "--fail-on"),
    (["check"], "Missing argument"),
    (["nonsense"], "No such command"),
    (["check", "m", "--weights", "1,x"], "comma-separated numbers"),
])
def test_usage_errors_are_one_line_with_exit_code_3(args, needle):
    res = CliRunner().invoke(main, args)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 3 and len(lines) == 1, res.stderr
    assert lines[0].startswith("hfscan: usage error:") and needle in lines[0] and "--help" in lines[0]


def test_version_and_help_exit_0():
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and res.stdout.startswith("hfscan, version ")
    res = CliRunner().invoke(main, ["check", "--help"])
    assert res.exit_code == 0 and "--fail-on" in res.stdout and "usage error" in res.stdout


def test_repeated_options_come_from_hfscan_toml_and_the_command_line_wins(zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    peers = ", ".join(f'"{zoo.path(f"zoo/clean-{i}")}"' for i in (1, 2, 3))
    (tmp_path / "hfscan.toml").write_text(f'fail-on = "never"\nsearch-budget = "off"\n\n[check]\npeer = [{peers}]\n'
                                          'no-defend = true\nformat = "json"\n')
    res = run("check", zoo.path("zoo/backdoor-cf"), "-o", tmp_path / "o")
    assert res.exit_code == 0, res.stderr  # fail-on never, from the file
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["verdict"] == "backdoor" and len(rep["peers"]) == 3 and rep["defense"] is None
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")) == ["report.json"]
    res = run("check", zoo.path("zoo/backdoor-cf"), "-o", tmp_path / "o2", "--fail-on", "backdoor")
    assert res.exit_code == 1  # the command line wins
    (tmp_path / "hfscan.toml").write_text('fial-on = "never"\n')
    res = CliRunner().invoke(main, ["check", "x"])
    assert res.exit_code == 3 and "'fial-on' is not an option" in res.stderr


def test_pyproject_tool_hfscan_table_is_read(tmp_path, monkeypatch):
    from scanner import settings
    from scanner.cli import main as group

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.hfscan]\nmax-peers = 5\n')
    table, source = settings.load(None)
    assert source.name == "pyproject.toml"
    defaults = settings.defaults_for(group, table)
    assert defaults["check"]["max_peers"] == 5 and defaults["peers"]["max_peers"] == 5
