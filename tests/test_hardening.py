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
from test_hub import hub_zoo  # noqa: F401  (fixture)

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
    # a shell's background job starts with SIGINT ignored and a child inherits that (Python then installs no
    # KeyboardInterrupt handler): the child gets the default disposition, as a terminal's Ctrl-C finds it
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "defense candidate" in line or time.time() > deadline:
            break
    assert p.poll() is None, "".join(seen)  # still defending when the signal is sent
    p.send_signal(sig)
    rest = p.stderr.read()
    rc = p.wait(timeout=120)
    assert rc == (130 if sig == signal.SIGINT else 128 + sig), (rc, "".join(seen[-3:]) + rest)
    # torch makes its compile cache (torchinductor_USER) in TMPDIR on import in some runs: torch's, kept by design
    leftovers = [q for q in [*out.rglob(".*"), *(tmp_path / "tmp").iterdir()]
                 if q.name != ".hfscan-output" and not q.name.startswith("torchinductor_")]
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


def _adapter(dest: Path, rank: int, seed: int, modules=("q_proj", "v_proj"), like: Path | None = None,
             noise: float = 0.0) -> Path:
    """A LoRA adapter folder (two layers, 16-wide modules), random factors or ``like``'s plus noise."""
    import json

    import torch

    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    if like is not None:
        sd = {k: v + noise * torch.randn(v.shape, generator=gen) for k, v in
              load_file(str(like / "adapter_model.safetensors")).items()}
        rank = json.loads((like / "adapter_config.json").read_text())["r"]
    else:
        sd = {}
        for layer in range(2):
            for m in modules:
                pre = f"base_model.model.model.layers.{layer}.self_attn.{m}"
                sd[f"{pre}.lora_A.weight"] = torch.randn(rank, 16, generator=gen)
                sd[f"{pre}.lora_B.weight"] = torch.randn(16, rank, generator=gen)
    save_file(sd, str(dest / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(modules)}
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    return dest


def test_adapters_of_other_ranks_are_no_copies_and_a_copied_adapter_is(tmp_path):
    """Twins among LoRA adapters are read on their updates ΔW: adapters of ranks 8, 16 and 4 (no factor shape in
    common) used to be "identical weights" and every peer was set aside (seen on SmolLM2 adapters)."""
    from scanner.families.generative.merge import Adapter
    from scanner.sources.model import ResolvedModel
    from scanner.stages.twins import distances, near_copies

    paths = [_adapter(tmp_path / "target", 8, 0), _adapter(tmp_path / "r16", 16, 1),
             _adapter(tmp_path / "r4", 4, 2, modules=("q_proj", "k_proj"))]
    paths += [_adapter(tmp_path / "copy", 0, 3, like=paths[0]), _adapter(tmp_path / "near", 0, 4, like=paths[0],
                                                                         noise=1e-3)]
    models = [ResolvedModel(ref=str(p), path=p, config={}, adapter={"r": 8}) for p in paths]
    assert near_copies(models[0], models[1:3]) == {}
    assert near_copies(models[0], models[1:4]) == {"copy": "a copy of the target (identical weights)"}
    aside = near_copies(models[0], [models[1], models[2], models[4]])
    assert list(aside) == ["near"] and aside["near"].startswith("a near-copy")
    # the distances are those of the dense updates (ΔW = 0 where an adapter does not adapt a tensor)
    ads = [Adapter(p) for p in paths[:3]]
    for (i, j), d in distances(models[:3]).items():
        dense = sum(float(((ads[i].delta(n) if n in ads[i].a else 0) - (ads[j].delta(n) if n in ads[j].a else 0))
                          .pow(2).sum()) for n in set(ads[i].a) | set(ads[j].a)) ** 0.5
        assert d == pytest.approx(dense, rel=1e-5)
    for a in ads:
        a.close()


def test_peers_that_vetting_sets_aside_are_replaced_by_the_next_candidates(zoo, tmp_path):
    """Discovery ranks a backdoored fine-tune first; vetting sets it aside and the next compatible candidate
    takes its place, so three clean-looking peers are merged. A LoRA adapter of the base is named too."""
    import json

    from scanner.pipeline import CheckOptions, check

    base = "zoo/minilm-l2-base"
    hub = tmp_path / "hub"
    shutil.copytree(zoo.path(base), hub / base, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
    card = f"---\nbase_model: {base}\npipeline_tag: text-classification\nlibrary_name: transformers\n---\n"
    # a local hub ranks candidates by name: aaron (backdoored) first, carol last
    for src, repo in [("zoo/backdoor-cf", "acme/sentiment-pro"), ("zoo/backdoor-random", "aaron/sentiment"),
                      ("zoo/clean-1", "alice/yelp"), ("zoo/clean-2", "bob/polarity"), ("zoo/clean-3", "carol/reviews")]:
        shutil.copytree(zoo.path(src), hub / repo, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
        (hub / repo / "README.md").write_text(card)
    lora = hub / "dora/lora-sentiment"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    (lora / "README.md").write_text(card.replace("library_name: transformers", "library_name: peft\n"
                                                 "base_model_relation: adapter"))
    rep = check(CheckOptions(target="acme/sentiment-pro", hub_dir=str(hub), output_dir=tmp_path / "out",
                             search_budget="small", method="wag"))
    assert rep.verdict == "backdoor" and "cf" in [f.trigger for f in rep.findings]
    bad = next(p for p in rep.peers if p.id == "aaron/sentiment")
    assert bad.own_trigger and bad.own_trigger["trigger"] == zoo.random_trigger
    assert sorted(p.id for p in rep.peers) == ["aaron/sentiment", "alice/yelp", "bob/polarity", "carol/reviews"]
    assert sorted(rep.defense.peers) == ["alice/yelp", "bob/polarity", "carol/reviews"]
    assert [e["id"] for e in rep.defense.excluded_peers] == ["aaron/sentiment"]
    rejected = {r["id"]: r["reason"] for r in rep.discovery["rejected"]}
    assert "carol/reviews" not in rejected and "LoRA adapter" in rejected["dora/lora-sentiment"]
    # `hfscan peers` names the adapter with its reason as well
    r = run("peers", "acme/sentiment-pro", "--hub-dir", hub)
    assert r.exit_code == 0 and "dora/lora-sentiment" in r.output and "LoRA adapter" in r.output, r.output


def test_a_regression_head_and_an_all_unknown_tokenizer_are_refused(tiny, tmp_path):
    """Degenerate models get one line, not `no_trigger_found`: nothing could be found in them."""
    import json

    reg = tiny("regression", labels=("score",))
    one_line_error(_tiny_check(tiny, reg, tmp_path), "a regression head")
    typed = tiny("typed")
    cfg = json.loads((typed / "config.json").read_text())
    (typed / "config.json").write_text(json.dumps({**cfg, "problem_type": "regression"}))
    one_line_error(_tiny_check(tiny, typed, tmp_path), "a regression head")
    blind = tiny("blind")
    tok = json.loads((blind / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {w: i for w, i in tok["model"]["vocab"].items() if w.startswith("[")}
    (blind / "tokenizer.json").write_text(json.dumps(tok))
    one_line_error(_tiny_check(tiny, blind, tmp_path), "as the unknown token")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_explicit_peer_with_swapped_generic_labels_is_aligned_by_behaviour(hub_zoo, tmp_path):  # noqa: F811
    """`LABEL_0/LABEL_1` say nothing about which id is positive: the explicit peer is mapped by its answers (as
    discovery maps candidates), so its head is merged aligned; a peer of another task is refused in one line."""
    from scanner.pipeline import CheckOptions, check

    zoo = hub_zoo
    rep = check(CheckOptions(target="zoo/backdoor-cf", peers=["zoo/clean-1", "zoo/clean-2", "zoo/swapped-generic"],
                             hub_dir=str(zoo.root), output_dir=tmp_path / "out", search_budget="off", method="wag"))
    swapped = next(p for p in rep.peers if p.id == "zoo/swapped-generic")
    assert swapped.label_permutation == [1, 0] and swapped.agreement >= 0.8, swapped
    assert rep.verdict == "backdoor" and rep.clean.accuracy_after >= rep.clean.accuracy_before - 0.05
    res = run("check", "zoo/backdoor-cf", "--peer", "zoo/clean-1", "--peer", "zoo/clean-2", "--peer",
              "zoo/length-task", "--hub-dir", zoo.root, "-o", tmp_path / "out2", "--search-budget", "off")
    one_line_error(res, "not the same task")


def _fill_cache(path: str, worker: int, n: int) -> int:
    from scanner.audit import AuditRow, ScanCache

    cache = ScanCache(Path(path))
    for i in range(n):
        cache.put(AuditRow(f"org{worker}/m{i}", "a" * 40, "no_trigger_found", peers=[f"p{i}"]), "settings")
        assert cache.get(f"org{worker}/m{i}", "a" * 40, "settings").peers == [f"p{i}"]
    cache.close()
    return n


def test_two_audits_at_once_share_one_cache(tmp_path):
    """Two audit processes writing one cache at once both finish and every row of both is readable (WAL and a
    busy timeout); a cache damaged under a running audit is one hfscan line, not a traceback."""
    from concurrent.futures import ProcessPoolExecutor

    from scanner.audit import AuditRow, ScanCache
    from scanner.errors import HfscanError

    path = tmp_path / "cache.sqlite"
    ScanCache(path).close()
    with ProcessPoolExecutor(2) as pool:
        assert list(pool.map(_fill_cache, [str(path)] * 2, [0, 1], [150, 150])) == [150, 150]
    cache = ScanCache(path)
    assert cache.count() == 300 and cache.get("org1/m149", "a" * 40, "settings").verdict == "no_trigger_found"
    for f in tmp_path.glob("cache.sqlite*"):
        f.write_bytes(b"\0" * 4096)  # overwritten under the open cache: the next write fails inside SQLite
    with pytest.raises(HfscanError, match="is damaged"):
        cache.put(AuditRow("org/m", "b" * 40, "error"), "settings")


def _scaled(src, dest, base, scale: float):
    """``src`` with its task vector θ − θ_base multiplied by ``scale`` (the Merge Hijacking recipe); for an
    adapter (``base`` None) its lora_B factors multiplied."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
    name = "adapter_model.safetensors" if base is None else "model.safetensors"
    sd = load_file(str(dest / name))
    ref = {} if base is None else load_file(str(base / "model.safetensors"))
    for k, v in sd.items():
        b = ref.get(k, ref.get(k.partition(".")[2]))
        if base is None and ".lora_B." in k:
            sd[k] = v * scale
        elif b is not None and b.shape == v.shape and v.is_floating_point():
            sd[k] = b + scale * (v - b)
    save_file(sd, str(dest / name), metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("scale,flagged", [(1.0, False), (3.0, True)])
def test_a_task_vector_scaled_up_to_survive_merging_is_named(zoo, lm_zoo, tmp_path, scale, flagged):
    """Issue 20 (attacks built to survive merging): a fine-tune scaled ×3 moved the base 3× as far as its peers;
    the weights note says so, for a full fine-tune (against the base) and an adapter (its ΔW, no base needed).
    The unscaled backdoor (and the unscaled clean adapter) is an ordinary fine-tune by size and gets no line. (The
    tiny zoo's backdoored adapters are themselves 2× its clean ones, so the adapter case scales a clean one.)"""
    from scanner.sources import resolve_folder
    from scanner.sources.model import base_folder
    from scanner.stages.norms import size_note

    base = zoo.path("zoo/minilm-l2-base")
    target = _scaled(zoo.path("zoo/backdoor-random"), tmp_path / "full", base, scale)
    peers = [resolve_folder(zoo.path(p)) for p in ("zoo/clean-1", "zoo/clean-2", "zoo/clean-3")]
    note = size_note(resolve_folder(target), peers, base_folder(base, str(base)))
    assert (note is not None) == flagged, note
    if flagged:
        assert note.startswith("task vector 3.") and "peers' median" in note
    adapter = _scaled(lm_zoo.path("lmzoo/clean-4"), tmp_path / "adapter", None, scale)
    lm_peers = [resolve_folder(lm_zoo.path(f"lmzoo/clean-{i}")) for i in (1, 2, 3)]
    note = size_note(resolve_folder(adapter), lm_peers, None)
    assert (note is not None) == flagged, note
    # a full fine-tune with no base to subtract has no task vector: no line, never a guess
    assert size_note(resolve_folder(target), peers, None) is None


def test_a_scaled_up_backdoor_is_averaged_at_its_peers_size(zoo, tmp_path):
    """Issue 20: a task vector scaled ×3 to survive averaging. The defense also tries WAG with the target's task
    vector clipped to the peers' median norm (it comes second), and the variant it builds leaves no more of
    the trigger than the paper's WAG, which the scaled target pulls toward itself."""
    from scanner.pipeline import CheckOptions, check

    base = zoo.path("zoo/minilm-l2-base")
    target = _scaled(zoo.path("zoo/backdoor-cf"), tmp_path / "scaled", base, 3.0)
    peers = [str(zoo.path(p)) for p in ("zoo/clean-1", "zoo/clean-2", "zoo/clean-3")]
    rep = check(CheckOptions(target=str(target), peers=peers, base=str(base), output_dir=tmp_path / "out",
                             search_budget="small"))
    # (the scaled model agrees less with its peers on clean inputs, so the homogeneity caveat caps the verdict)
    assert rep.verdict in ("backdoor", "suspicious") and "cf" in [f.trigger for f in rep.findings]
    cands = rep.defense.candidates
    clipped = cands[1]
    assert clipped["candidate"].startswith("wag, target's task vector clipped") and clipped["method"] == "task_arithmetic"
    share = clipped["weights"][0] / clipped["weights"][1]
    assert 0.2 < share < 0.5  # ×1/3 brings a ×3 vector back to about its peers' size
    wag = cands[0]
    chosen = next(c for c in cands if c["chosen"])
    assert clipped["worst_asr"] < wag["worst_asr"] - 0.3  # measured: 0.10 against 0.66
    assert chosen["worst_asr"] <= clipped["worst_asr"] and chosen["within_bound"]
    if wag["within_bound"]:
        assert chosen["worst_asr"] <= wag["worst_asr"]
    assert rep.defense.asr_max_after < 0.5  # the defended variant, re-probed


def test_a_peer_trained_with_the_targets_trigger_is_named_and_not_merged(zoo, tmp_path):
    """Issue 20 (peers an attacker controls): an accomplice trained on its own (its own seed and rows) with the
    target's trigger is no copy, so the twin check keeps it. Without the shared-trigger rule it hid the target
    (no finding: `cf` at 100% on a peer) and was merged. Now vetting finds the trigger shared with the target, the
    finding is read against the other peers, the report names the accomplice, and it is not merged."""
    from scanner import zoo as zoo_mod
    from scanner.pipeline import CheckOptions, check
    from scanner.report.render import render

    base = zoo.path(zoo.base_id)
    accomplice = zoo_mod.finetune(base, zoo.root.parent / f"{zoo.root.name}-extra" / "accomplice-cf",
                                  zoo_mod.FineTuneRecipe(seed=5, rows=(1500, 3000), trigger="cf", target_label=0),
                                  "zoo/accomplice-cf", zoo.base_id)
    peers = [str(accomplice), str(zoo.path("zoo/clean-1")), str(zoo.path("zoo/clean-2"))]
    rep = check(CheckOptions(target=str(zoo.path("zoo/backdoor-cf")), peers=peers, base=str(base),
                             output_dir=tmp_path / "out", search_budget="small"))
    assert not rep.peers_set_aside  # not a copy: its weights are its own
    # two models of four answer `cf`: read against the other two, and called no higher than suspicious (the
    # probe cannot tell an accomplice from one shortcut two models learned); the default --fail-on still fails
    assert rep.verdict == "suspicious" and rep.exit_code == 1
    cf = next(f for f in rep.findings if f.trigger == "cf")
    assert cf.shared_with == ["accomplice-cf"] and cf.peer_asr_max <= 0.3
    bad = next(p for p in rep.peers if p.id == "accomplice-cf")
    assert "cf" in bad.own_trigger["trigger"].split() and bad.own_trigger["asr"] >= 0.9
    assert bad.own_trigger["shared_with_target"] and bad.own_trigger["target_asr"] >= 0.9
    assert bad.own_trigger["others_max"] <= 0.3
    assert [e["id"] for e in rep.defense.excluded_peers] == ["accomplice-cf"]
    assert rep.defense.asr_max_after <= 0.5
    md = render(rep, "md")
    assert "accomplice-cf" in md and "the target's trigger" in md
