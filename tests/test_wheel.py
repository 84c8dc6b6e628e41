"""The built wheel works without the source tree: templates, probe data and the CLI come from the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp / "dist").glob("hfscan-*.whl"))
    target = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return wheel, target, tmp


def _run(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy first, before any editable install
    return subprocess.run([sys.executable, "-c", "import sys; from scanner.cli import main; sys.argv[0] = 'hfscan'; "
                           "main()", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_ships_templates_and_probe_data(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ["scanner/templates/report.md.j2", "scanner/templates/report.html.j2", "scanner/data/README.md",
                   "scanner/families/generative/probe.py", "scanner/report/escape.py"]:
        assert needed in names, needed
    assert any(n.startswith("scanner/data/") and n.endswith(".tsv") for n in names)


def test_the_installed_package_scans_without_the_source_tree(installed, tmp_path):
    from conftest import make_tiny_classifier

    _, target, _ = installed
    models = [make_tiny_classifier(tmp_path / f"m{i}", seed=i) for i in range(4)]
    probe = subprocess.run([sys.executable, "-c", "import scanner; print(scanner.__file__)"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert probe.stdout.strip().startswith(str(target)), probe.stdout + probe.stderr  # not the checkout
    assert _run(target, tmp_path, "--version").stdout.startswith("hfscan, version ")
    r = _run(target, tmp_path, "check", str(models[0]), *[a for m in models[1:] for a in ("--peer", str(m))],
             "-o", str(tmp_path / "out"), "--search-budget", "off", "--no-defend", "--format", "json,md,html,sarif",
             "--json")
    assert r.returncode in (0, 1), r.stderr
    report = json.loads(r.stdout)
    assert report["verdict"] in ("no_trigger_found", "suspicious", "backdoor")
    assert (tmp_path / "out" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert "hfscan report" in (tmp_path / "out" / "report.md").read_text()
