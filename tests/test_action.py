"""The GitHub Action: lint-clean, schema-valid, and its run step behaves like a runner would see it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted([*ROOT.glob(".github/workflows/*.yml"), *ROOT.glob("examples/workflows/*.yml")])
BIN = Path(sys.executable).parent


def _tool(name):
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install '.[test]')")
    return path


def test_zizmor_finds_nothing_at_medium_or_above():
    r = subprocess.run([_tool("zizmor"), "--offline", "--min-severity", "medium", "action.yml",
                        *[str(w.relative_to(ROOT)) for w in WORKFLOWS]], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_action_and_workflows_match_githubs_schemas():
    cj = _tool("check-jsonschema")
    r = subprocess.run([cj, "--builtin-schema", "vendor.github-actions", "action.yml"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([cj, "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_inputs_reach_scripts_only_through_env():
    import yaml

    action = yaml.safe_load((ROOT / "action.yml").read_text())
    for step in action["runs"]["steps"]:
        if "run" in step:
            assert "${{" not in step["run"], step["run"]


def run_step(tmp_path, env_extra=None, **inputs):
    out, summary = tmp_path / "github_output", tmp_path / "step_summary"
    out.write_text("")
    summary.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INPUT_")}
    env.update({"GITHUB_OUTPUT": str(out), "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_ACTION_PATH": str(ROOT),
                "PATH": f"{BIN}:{env.get('PATH', '')}", "HF_ENDPOINT": "http://127.0.0.1:9"})  # no network here
    env.update({f"INPUT_{k.upper()}": v for k, v in inputs.items()})
    env.update(env_extra or {})
    r = subprocess.run(["bash", str(ROOT / "scripts" / "action_run.sh")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    return r, outputs, summary.read_text()


@pytest.fixture(scope="module")
def backdoor_step(zoo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("action")
    peers = "\n".join(str(zoo.path(f"zoo/clean-{i}")) for i in (1, 2, 3))
    return run_step(tmp, model=str(zoo.path("zoo/backdoor-cf")), peers=peers, fail_on="backdoor",
                    extra_args="--search-budget off --method wag"), tmp


def test_action_step_sets_outputs_summary_and_fails_on_backdoor(backdoor_step):
    (r, outputs, summary), tmp = backdoor_step
    assert r.returncode == 1, r.stdout + r.stderr
    assert "::error::hfscan verdict" in r.stderr
    assert outputs["verdict"] == "backdoor"
    assert float(outputs["max-asr"]) >= 0.9 and float(outputs["defended-asr"]) < float(outputs["max-asr"])
    assert Path(tmp / outputs["sarif-file"]).exists() and outputs["report-dir"] == "hfscan-report"
    assert "hfscan" in summary and "backdoor found" in summary and "`cf`" in summary


def test_fail_on_never_and_suspicious(zoo, tmp_path):
    peers = f"{zoo.path('zoo/clean-2')},{zoo.path('zoo/clean-3')}"
    r, outputs, _ = run_step(tmp_path, model=str(zoo.path("zoo/clean-1")), peers=peers, fail_on="suspicious",
                             extra_args="--search-budget off --no-defend")
    assert r.returncode == 0 and outputs["verdict"] == "no_trigger_found", r.stderr
    r2, outputs2, _ = run_step(tmp_path, model=str(zoo.path("zoo/backdoor-cf")), peers=peers, fail_on="never",
                               extra_args="--search-budget off --no-defend")
    assert r2.returncode == 0 and outputs2["verdict"] == "backdoor", r2.stderr


def test_shell_metacharacters_in_inputs_execute_nothing(tmp_path):
    canary = tmp_path / "pwned"
    evil = f"$(touch {canary}); `touch {canary}`"
    r, outputs, _ = run_step(tmp_path, model=evil, peers=evil, extra_args=evil, fail_on="backdoor")
    assert not canary.exists()
    assert r.returncode == 3 and "usage error" in r.stderr  # hfscan got the text literally: an unknown option
    r, _, _ = run_step(tmp_path, model="x", fail_on=f"$(touch {canary})")
    assert r.returncode == 2 and not canary.exists()
