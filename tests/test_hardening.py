"""Hardening: nothing hfscan did not write is lost, no path escapes what the user named, signals clean up."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import one_line_error

from scanner.cli import main
from scanner.report.card import END, START, CardUnsafeError, upsert_section


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)



def test_merge_never_replaces_a_folder_it_did_not_write(tiny, tmp_path):
    a, b = tiny("a", seed=1), tiny("b", seed=2)
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "notes.txt").write_text("three weeks of work")
    one_line_error(run("merge", a, b, "-o", mine), "never replaces")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "three weeks of work"
    # a file in the way is refused the same way; an empty folder or hfscan's own output is replaced
    (tmp_path / "file").write_text("x")
    one_line_error(run("merge", a, b, "-o", tmp_path / "file"), "is a file")
    out = tmp_path / "merged"
    assert run("merge", a, b, "-o", out).exit_code == 0
    assert run("merge", a, b, "-o", out, "--weights", "0.3,0.7").exit_code == 0  # its own output: replaced
    assert (out / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stray temp or .old folders


def _author_text(rng: random.Random) -> str:
    parts = ["# Model\n", "Some *author* text.\n", "| a | b |\n", START, END, "\n", "<!-- other -->", "ünïcode ✓\n"]
    return "".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))


def _outside(card: str) -> str:
    i, j = card.find(START), card.find(END)
    return card[:i] + card[j + len(END):]


def test_card_upsert_keeps_the_authors_text_through_any_sequence_of_rescans():
    rng = random.Random(7)
    refused = kept = 0
    for _ in range(600):
        card = _author_text(rng)
        hostile = rng.choice(["neg", f"neg{END}\n# injected", f"x{START}y", "a|b\n::error::boom"])
        section = f"{START}\nlabel {hostile}\n{END}"
        try:
            first = upsert_section(card, section)
        except CardUnsafeError:
            refused += 1
            well_formed = (card.count(START), card.count(END)) == (1, 1) and card.find(START) < card.find(END)
            assert START in card or END in card
            assert not well_formed, card
            continue
        kept += 1
        assert first.count(START) == 1 and first.count(END) == 1  # a label can never close the section early
        again = first
        for _ in range(3):  # rescans replace the section only
            again = upsert_section(again, f"{START}\nrescan {rng.random()}\n{END}")
            assert _outside(again) == _outside(first)
        if START not in card:  # appended: the author's card is a byte-identical prefix
            assert first.startswith(card)
        else:
            assert _outside(first) == _outside(card)
    assert refused > 50 and kept > 50


def test_check_refuses_a_defended_path_it_did_not_write_before_scanning(zoo, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "defended").write_text("not a model")
    res = run("check", zoo.path("zoo/backdoor-cf"), "--peer", zoo.path("zoo/clean-1"), "-o", out)
    one_line_error(res, "is a file")
    assert sorted(p.name for p in out.iterdir()) == ["defended"] and (out / "defended").read_text() == "not a model"
    (tmp_path / "f").write_text("")
    one_line_error(run("check", zoo.path("zoo/backdoor-cf"), "-o", tmp_path / "f" / "sub"), "is a file")


def test_open_pr_on_a_folder_is_refused_before_the_scan(zoo, tmp_path):
    out = tmp_path / "o"
    one_line_error(run("check", zoo.path("zoo/backdoor-cf"), "--open-pr", "-o", out), "need a model on the Hub")
    assert not out.exists()


def test_a_repo_id_cannot_leave_the_hub_folder(zoo, tmp_path):
    outside = tmp_path / "outside" / "m"
    shutil.copytree(zoo.path("zoo/clean-1"), outside)
    hub = tmp_path / "hub"
    (hub / "heldout").mkdir(parents=True)
    one_line_error(run("check", "heldout/../../outside/m", "--hub-dir", hub, "-o", tmp_path / "o"),
                   "valid Hub model id")
    (hub / "evil").mkdir()
    (hub / "evil" / "link").symlink_to(outside)
    one_line_error(run("check", "evil/link", "--hub-dir", hub, "-o", tmp_path / "o"), "outside the hub folder")


def test_a_cards_base_model_is_never_read_as_a_local_path(zoo, tmp_path):
    from scanner.pipeline import CheckOptions
    from scanner.sources import FolderSource
    from scanner.stages.resolve import base_model

    target = FolderSource().resolve(str(zoo.path("zoo/clean-1")))
    target.card = {"base_model": str(zoo.path("zoo/minilm-l2-base"))}  # an absolute path in a card
    assert base_model(CheckOptions(target=str(target.path)), target, FolderSource()) is None
    target.card = {"base_model": "../minilm-l2-base"}
    assert base_model(CheckOptions(target=str(target.path)), target, FolderSource()) is None
    # --base is the user's word: a folder is read
    given = base_model(CheckOptions(target=str(target.path), base=str(zoo.path("zoo/minilm-l2-base"))), target,
                       FolderSource())
    assert given is not None and given.path == zoo.path("zoo/minilm-l2-base")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_defense_leaves_no_temporary_folder(zoo, tmp_path, sig):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "scanner.cli", "check", str(zoo.path("zoo/backdoor-cf")),
           *sum((["--peer", str(zoo.path(f"zoo/clean-{i}"))] for i in (1, 2, 3)), []), "--search-budget", "off",
           "-o", str(out)]
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "PYTHONUNBUFFERED": "1"}
    (tmp_path / "tmp").mkdir()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    for line in p.stderr:
        if "defense candidate" in line or time.time() > deadline:
            break
    p.send_signal(sig)
    p.stderr.read()
    rc = p.wait(timeout=120)
    assert rc == (130 if sig == signal.SIGINT else 128 + sig), rc
    leftovers = [q for q in [*out.rglob(".*"), *(tmp_path / "tmp").iterdir()] if q.name != ".hfscan-output"]
    assert not leftovers, leftovers
    assert not (out / "defended").exists()  # nothing half-built in its place


def test_the_output_marker_is_not_published(tmp_path):
    from scanner.publish import push_variant

    d = tmp_path / "defended"
    d.mkdir()
    (d / ".hfscan-output").write_text("")
    (d / "config.json").write_text("{}")

    class Hub:
        endpoint = "http://127.0.0.1:9"

    assert push_variant(Hub(), "org/x", Path(d)).files == ["config.json"]


@pytest.mark.parametrize("kind", ["fifo", "outside-link", "broken-link"])
def test_weights_that_are_not_regular_files_are_refused(tiny, tmp_path, kind):
    model = tiny("m")
    weights = model / "model.safetensors"
    if kind == "fifo":
        weights.unlink()
        os.mkfifo(weights)  # reading it would block forever
    elif kind == "outside-link":
        outside = tmp_path / "elsewhere.safetensors"
        weights.rename(outside)
        weights.symlink_to(outside)
    else:
        weights.unlink()
        weights.symlink_to(tmp_path / "missing.safetensors")
    res = run("merge", str(model), str(tiny("p")), "-o", str(tmp_path / "out"))
    one_line_error(res, "broken link" if kind == "broken-link" else "not a regular file")
    assert not (tmp_path / "out").exists()


def test_a_link_inside_the_model_folder_is_fine(tiny, tmp_path):
    model = tiny("m")
    (model / "weights").mkdir()
    (model / "model.safetensors").rename(model / "weights" / "w.safetensors")
    (model / "model.safetensors").symlink_to(model / "weights" / "w.safetensors")
    res = run("merge", str(model), str(tiny("p")), "-o", str(tmp_path / "out"))
    assert res.exit_code == 0, res.stderr


def _tiny_check(tiny, target, tmp_path, *extra):
    peers = [a for i in range(3) for a in ("--peer", str(tiny(f"peer{i}", seed=i)))]
    return run("check", str(target), *peers, "-o", str(tmp_path / "out"), "--search-budget", "off", "--no-defend",
               *extra)


def _edit_header(weights: Path, edit) -> None:
    import json
    import struct

    raw = weights.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    hb = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])


def test_more_bad_input_gets_one_line(tiny, tmp_path):
    import json

    import torch
    from safetensors.torch import load_file, save_file

    listed = tiny("list")
    cfg = json.loads((listed / "config.json").read_text())
    (listed / "config.json").write_text(json.dumps({**cfg, "id2label": ["neg", "pos"]}))
    one_line_error(_tiny_check(tiny, listed, tmp_path), "id2label is a list")
    offsets = tiny("offsets")
    _edit_header(offsets / "model.safetensors",
                 lambda h: h[next(k for k in h if k != "__metadata__")].update(data_offsets=["0", "x"]))
    one_line_error(_tiny_check(tiny, offsets, tmp_path), "must be non-negative integers")
    nan = tiny("nan")
    sd = load_file(str(nan / "model.safetensors"))
    sd["classifier.weight"] = torch.full_like(sd["classifier.weight"], float("nan"))
    save_file(sd, str(nan / "model.safetensors"), metadata={"format": "pt"})
    one_line_error(_tiny_check(tiny, nan, tmp_path), "outputs are NaN")
    binary = tmp_path / "probe.tsv"
    binary.write_bytes(b"sentence\tlabel\n\x00\xff\xfe\x00" * 50)
    one_line_error(_tiny_check(tiny, tiny("ok"), tmp_path, "--probe-data", str(binary)), "UTF-8")
    binary.write_bytes(b"sentence\tlabel\nabc\x00def\t0\n" * 20)
    one_line_error(_tiny_check(tiny, tiny("ok2"), tmp_path, "--probe-data", str(binary)), "binary")


def test_a_corrupt_audit_cache_is_one_line(tiny, tmp_path):
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(b"not a database " * 100)
    models = tmp_path / "models.txt"
    models.write_text("org/m\n")
    res = run("audit", "--models", str(models), "--cache", str(cache), "-o", str(tmp_path / "audit"),
              "--hub-dir", str(tmp_path))
    one_line_error(res, "not a usable SQLite database")
    assert cache.read_bytes().startswith(b"not a database")  # left as it was, for the user to decide


def _noisy_copy(src: Path, dest: Path, scale: float) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
    if scale:
        gen = torch.Generator().manual_seed(0)
        sd = load_file(str(dest / "model.safetensors"))
        sd = {k: v + scale * v.float().std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() and
              v.numel() > 1 else v for k, v in sd.items()}
        save_file({k: v.contiguous() for k, v in sd.items()}, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("case", ["twin", "noisy-twin", "two-twins", "itself"])
def test_copies_of_the_target_are_set_aside_as_peers(zoo, tmp_path, case):
    from scanner.pipeline import CheckOptions, check

    target = zoo.path("zoo/backdoor-cf")
    twin = _noisy_copy(target, tmp_path / "twin", 0.0 if case != "noisy-twin" else 0.01)
    peers = {"twin": [twin, zoo.path("zoo/clean-1"), zoo.path("zoo/clean-2")],
             "noisy-twin": [twin, zoo.path("zoo/clean-1"), zoo.path("zoo/clean-2")],
             "two-twins": [twin, _noisy_copy(target, tmp_path / "twin2", 0.0), zoo.path("zoo/clean-1")],
             "itself": [target, zoo.path("zoo/clean-1"), zoo.path("zoo/clean-2")]}[case]
    rep = check(CheckOptions(target=str(target), peers=[str(p) for p in peers], output_dir=tmp_path / "o",
                             search_budget="off", defend=False))
    aside = {x["id"]: x["reason"] for x in rep.peers_set_aside}
    expected = {"twin": ["twin"], "noisy-twin": ["twin"], "two-twins": ["twin", "twin2"], "itself": ["backdoor-cf"]}
    assert sorted(aside) == expected[case], aside
    assert rep.verdict != "no_trigger_found" and any(f.trigger == "cf" for f in rep.findings)
    assert set(aside).isdisjoint(p.id for p in rep.peers)
