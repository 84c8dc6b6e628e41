"""Merge methods against plain reference formulas, streaming driver, heads, refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from scanner.errors import HfscanError, IncompatibleModelsError
from scanner.merge import MergeSpec, merge_folders
from scanner.merge.heads import label_permutation
from scanner.weights import WeightSet


def _sd(folder):
    return WeightSet.open(folder)


def _all(folder):
    ws = WeightSet.open(folder)
    return {n: ws.get(n) for n in ws.names()}


@pytest.fixture
def trio(tiny):
    return tiny("target", seed=1), [tiny("p1", seed=2), tiny("p2", seed=3)], tiny("base", seed=4)


def test_wag_equals_in_memory_average(trio, tmp_path):
    target, peers, _ = trio
    out = tmp_path / "out"
    merge_folders(target, peers, out, MergeSpec("wag"))
    sds = [_all(f) for f in [target, *peers]]
    got = _all(out)
    for name, t in got.items():
        if t.is_floating_point():
            ref = torch.stack([s[name] for s in sds]).mean(0)
            assert torch.allclose(t, ref, atol=1e-6), name
        else:
            assert torch.equal(t, sds[0][name])
    m = AutoModelForSequenceClassification.from_pretrained(out, use_safetensors=True)
    assert m.config.id2label[0] == "negative"


def test_weighted_wag(trio, tmp_path):
    target, peers, _ = trio
    merge_folders(target, peers, tmp_path / "o", MergeSpec("wag", weights=[2, 1, 1]))
    sds = [_all(f) for f in [target, *peers]]
    name = "bert.encoder.layer.0.attention.self.query.weight"
    ref = (2 * sds[0][name] + sds[1][name] + sds[2][name]) / 4
    assert torch.allclose(_all(tmp_path / "o")[name], ref, atol=1e-6)


def _ref_ties(deltas, w, density):
    trimmed = []
    for d in deltas:
        k = int(density * d.numel())
        thr = d.abs().flatten().kthvalue(d.numel() - k + 1).values if k > 0 else float("inf")
        trimmed.append(torch.where(d.abs() >= thr, d, torch.zeros_like(d)))
    s = torch.stack(trimmed)
    sign = torch.where(s.sum(0) >= 0, 1.0, -1.0)
    agree = (s.sign() == sign)
    num = (s * torch.tensor(w).view(-1, *[1] * (s.dim() - 1)) * agree).sum(0)
    return num / agree.sum(0).clamp(min=1)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_task_vector_methods_match_reference(trio, tmp_path, method):
    target, peers, base = trio
    lam, density = 0.8, 0.4
    merge_folders(target, peers, tmp_path / "o", MergeSpec(method, base=base, lam=lam, density=density))
    sds = [_all(f) for f in [target, *peers]]
    b = _all(base)
    got = _all(tmp_path / "o")
    n = 3
    for name, t in got.items():
        if not t.is_floating_point():
            continue
        deltas = [s[name] - b[name] for s in sds]
        if method == "task_arithmetic":
            ref = b[name] + lam * sum(d / n for d in deltas)
        else:
            ref = b[name] + lam * _ref_ties(deltas, [1.0] * n, density)
        assert torch.allclose(t, ref, atol=1e-6), (method, name)


def test_dare_is_seeded_and_matches_expectation(trio, tmp_path):
    target, peers, base = trio
    for i in (1, 2):
        merge_folders(target, peers, tmp_path / f"o{i}", MergeSpec("dare_linear", base=base, density=0.5, seed=7))
    merge_folders(target, peers, tmp_path / "o3", MergeSpec("dare_linear", base=base, density=0.5, seed=8))
    a, b2, c = _all(tmp_path / "o1"), _all(tmp_path / "o2"), _all(tmp_path / "o3")
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    assert torch.equal(a[name], b2[name])
    assert not torch.equal(a[name], c[name])
    # DARE keeps each delta entry with prob. density and rescales by 1/density: every merged entry is
    # base + Σ wᵢ·mᵢ·δᵢ/density with mᵢ ∈ {0,1}; check that decomposition holds exactly.
    sds = [_all(f) for f in [target, *peers]]
    bb = _all(base)[name]
    deltas = [s[name] - bb for s in sds]
    got = (a[name] - bb) * 0.5 * 3  # = Σ mᵢδᵢ
    import itertools
    ok = torch.zeros_like(got, dtype=torch.bool)
    for mask in itertools.product([0, 1], repeat=3):
        cand = sum(m * d for m, d in zip(mask, deltas))
        ok |= (cand - got).abs() < 1e-5
    assert ok.all()
    dt = MergeSpec("dare_ties", base=base, density=0.5, seed=7)
    merge_folders(target, peers, tmp_path / "o4", dt)
    merge_folders(target, peers, tmp_path / "o5", dt)
    assert torch.equal(_all(tmp_path / "o4")[name], _all(tmp_path / "o5")[name])


def test_sharded_inputs_and_outputs(tiny, tmp_path):
    target = tiny("t", seed=1, shard_bytes=4_000)
    peers = [tiny("p", seed=2)]
    assert (target / "model.safetensors.index.json").exists()
    out = tmp_path / "o"
    merge_folders(target, peers, out, MergeSpec("wag", max_shard_bytes=4_000))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    m = AutoModelForSequenceClassification.from_pretrained(out, use_safetensors=True)
    assert m.num_labels == 2


def test_bf16_in_bf16_out(tiny, tmp_path):
    t = tiny("t", seed=1, dtype=torch.bfloat16)
    p = tiny("p", seed=2, dtype=torch.bfloat16)
    merge_folders(t, [p], tmp_path / "o", MergeSpec("wag"))
    ws = WeightSet.open(tmp_path / "o")
    assert {i.dtype for i in ws.header.values() if i.is_float} == {"BF16"}
    name = "classifier.weight"
    ref = ((WeightSet.open(t).get(name).float() + WeightSet.open(p).get(name).float()) / 2).to(torch.bfloat16)
    assert torch.equal(ws.get(name), ref)


def test_permuted_labels_merge_like_their_twin(tiny, tmp_path):
    target = tiny("t", seed=1)
    twin = tiny("twin", seed=2)
    # the same model with its labels listed the other way round: head rows swapped
    swapped = tmp_path / "swapped"
    import shutil
    shutil.copytree(twin, swapped)
    cfg = json.loads((swapped / "config.json").read_text())
    cfg["id2label"] = {"0": "positive", "1": "negative"}
    cfg["label2id"] = {"positive": 0, "negative": 1}
    (swapped / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import save_file
    sd = load_file(swapped / "model.safetensors")
    sd["classifier.weight"] = sd["classifier.weight"][[1, 0]].contiguous()
    sd["classifier.bias"] = sd["classifier.bias"][[1, 0]].contiguous()
    save_file(sd, swapped / "model.safetensors", metadata={"format": "pt"})
    merge_folders(target, [twin], tmp_path / "a", MergeSpec("wag"))
    summary = merge_folders(target, [swapped], tmp_path / "b", MergeSpec("wag"))
    a, b = _all(tmp_path / "a"), _all(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert summary["head_permutations"] == {str(swapped): [1, 0]}


def test_label_permutation_rules():
    assert label_permutation(["negative", "positive"], ["Positive", "NEGATIVE"], "p") == [1, 0]
    assert label_permutation(["LABEL_0", "LABEL_1"], ["LABEL_0", "LABEL_1"], "p") == [0, 1]
    with pytest.raises(IncompatibleModelsError, match="label spaces differ"):
        label_permutation(["negative", "positive"], ["sports", "world"], "p")
    with pytest.raises(IncompatibleModelsError, match="3 labels"):
        label_permutation(["a", "b"], ["a", "b", "c"], "p")


def test_base_encoder_without_head_falls_back_to_wag_for_head(tiny, tmp_path):
    """A bare encoder base (no classifier, no 'bert.' prefix) works; the head is averaged."""
    from transformers import BertModel
    target, peer = tiny("t", seed=1), tiny("p", seed=2)
    cls = AutoModelForSequenceClassification.from_pretrained(tiny("b", seed=3))
    base = tmp_path / "encoder"
    BertModel(cls.config).save_pretrained(base, safe_serialization=True)
    s = merge_folders(target, [peer], tmp_path / "o", MergeSpec("task_arithmetic", base=base))
    assert set(s["wag_fallback_tensors"]) == {"classifier.weight", "classifier.bias"}
    got = _all(tmp_path / "o")
    b = _all(base)
    t, p = _all(target), _all(peer)
    n = "bert.encoder.layer.0.output.dense.weight"
    assert torch.allclose(got[n], b["encoder.layer.0.output.dense.weight"] + ((t[n] - b["encoder.layer.0.output.dense.weight"]) + (p[n] - b["encoder.layer.0.output.dense.weight"])) / 2, atol=1e-6)


def test_shape_mismatch_names_first_tensor(tiny, tmp_path):
    t = tiny("t", seed=1)
    p = tiny("p", seed=2, vocab=60)
    with pytest.raises(IncompatibleModelsError, match="word_embeddings"):
        merge_folders(t, [p], tmp_path / "o", MergeSpec("wag"))
    assert not (tmp_path / "o").exists()
    assert not any(x.name.startswith(".o.tmp") for x in tmp_path.iterdir())


@pytest.mark.parametrize("method,density", [("wag", 1.0), ("task_arithmetic", 1.0), ("dare_linear", 1.0), ("ties", 0.3)])
def test_row_chunked_merge_equals_whole_tensor_merge(trio, tmp_path, method, density):
    """Large tensors are merged in row chunks (TIES after a per-model threshold pass): same result."""
    target, peers, base = trio
    big = 1 << 40
    whole = merge_folders(target, peers, tmp_path / "whole", MergeSpec(method, base=base, density=density, chunk_bytes=big))
    merge_folders(target, peers, tmp_path / "chunked", MergeSpec(method, base=base, density=density, chunk_bytes=256))
    a, b = _all(tmp_path / "whole"), _all(tmp_path / "chunked")
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert whole["method"] == method


@pytest.mark.parametrize("density", [0.0, 0.001, 0.3, 0.5, 0.999, 1.0])
def test_streamed_trim_threshold_equals_kthvalue_bit_for_bit(density):
    """TIES's threshold over a task vector read in chunks (radix selection) is kthvalue's, ties and zeros included."""
    from scanner.merge.methods import trim_threshold, trim_threshold_streaming
    from scanner.merge.registry import MergeParams

    g = torch.Generator().manual_seed(0)
    delta = torch.randn(1000, 37, generator=g) * torch.logspace(-8, 1, 37)
    delta[:50] = 0.0
    delta[50:60] = delta[60:70]  # repeated magnitudes
    delta[70:80] = -delta[80:90]
    params = MergeParams(density=density)
    chunks = lambda: (delta[i:i + 64] for i in range(0, 1000, 64))  # noqa: E731
    assert trim_threshold_streaming(chunks, delta.numel(), params) == trim_threshold(delta, params)


def test_merge_cli_writes_loadable_folder_and_refuses_bad_input(tiny, tmp_path):
    from click.testing import CliRunner
    from scanner.cli import main

    t, p = tiny("t", seed=1), tiny("p", seed=2)
    out = tmp_path / "merged"
    r = CliRunner().invoke(main, ["merge", "--method", "ties", "--base", str(tiny("b", seed=3)), "--density", "0.3",
                                  str(t), str(p), "-o", str(out), "--shard-size", "4KB"])
    assert r.exit_code == 0, r.output + r.stderr
    assert (out / "model.safetensors.index.json").exists()
    assert AutoModelForSequenceClassification.from_pretrained(out, use_safetensors=True).num_labels == 2
    # other labels -> exit 2, one line, no output folder
    other = tiny("other", seed=4, labels=("world", "sports"))
    out2 = tmp_path / "merged2"
    r = CliRunner().invoke(main, ["merge", str(t), str(other), "-o", str(out2)])
    assert r.exit_code == 2 and "label spaces differ" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out2.exists()
    # a base-model method without a base -> exit 2
    r = CliRunner().invoke(main, ["merge", "--method", "task_arithmetic", str(t), str(p), "-o", str(out2)])
    assert r.exit_code == 2 and "needs a base" in r.stderr and not out2.exists()


def test_target_keep_blends_the_merge_back_toward_the_target(trio, tmp_path):
    target, peers, base = trio
    merge_folders(target, peers, tmp_path / "ties", MergeSpec("ties", base=base, density=0.5))
    merge_folders(target, peers, tmp_path / "kept", MergeSpec("ties", base=base, density=0.5, keep=0.25))
    t, m, k = _all(target), _all(tmp_path / "ties"), _all(tmp_path / "kept")
    for name, x in k.items():
        if x.is_floating_point():
            assert torch.allclose(x, 0.25 * t[name] + 0.75 * m[name], atol=1e-6), name
    assert MergeSpec("wag", keep=0.5).describe()["target_keep"] == 0.5
    with pytest.raises(HfscanError):
        merge_folders(target, peers, tmp_path / "bad", MergeSpec("wag", keep=1.0))
    assert not (tmp_path / "bad").exists()


def test_module_switching_takes_each_block_whole_from_its_assigned_model(tiny, tmp_path):
    """Each layer's attention and feed-forward block is one model's own, bit for bit (`switching.assignment`);
    tensors outside the layers are the plain average; the folder loads; bad per-module weights are refused."""
    from scanner.merge.switching import ATTENTION, FEED_FORWARD, assignment, layer_count, switching_spec

    target, peers = tiny("t4", seed=1, layers=4), [tiny("p4a", seed=2, layers=4), tiny("p4b", seed=3, layers=4)]
    sds = [_all(f) for f in [target, *peers]]
    layers = layer_count(sds[0])
    assert layers == 4
    spec = switching_spec(3, layers)
    merge_folders(target, peers, tmp_path / "ms", spec)
    got = _all(tmp_path / "ms")
    import re

    checked = {"attention": 0, "ffn": 0}
    for layer, (att, ffn) in enumerate(assignment(3, layers)):
        for name in got:
            m = re.search(rf"\.layer\.{layer}\.{ATTENTION}\.", name) or re.search(rf"\.layer\.{layer}\.{FEED_FORWARD}\.",
                                                                               name)
            if m and got[name].is_floating_point():
                src = att if m.group(1) in ("attention", "self_attn", "attn") else ffn
                assert torch.equal(got[name], sds[src][name]), name
                checked["attention" if src == att else "ffn"] += 1
    assert checked["attention"] and checked["ffn"]
    emb = next(n for n in got if "word_embeddings" in n)
    assert torch.allclose(got[emb], torch.stack([s[emb] for s in sds]).mean(0), atol=1e-6)
    assert [a for a, _ in assignment(3, 4)] != [f for _, f in assignment(3, 4)]  # never both blocks from one model
    assert all(a != f for a, f in assignment(2, 6)) and all(
        assignment(2, 6)[i][1] != assignment(2, 6)[i + 1][0] for i in range(5))
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "ms", use_safetensors=True)
    assert spec.describe()["modules"].startswith("module switching")
    with pytest.raises(HfscanError, match="module weights"):
        merge_folders(target, peers, tmp_path / "bad", MergeSpec("wag", module_weights=((r"layer\.0\.", (1.0, 0.0)),)))
    assert not (tmp_path / "bad").exists()


def test_merge_cli_switches_modules(tiny, tmp_path):
    from click.testing import CliRunner

    from scanner.cli import main
    from scanner.merge.switching import switching_spec

    t, p = tiny("t3", seed=1, layers=3), tiny("p3", seed=2, layers=3)
    r = CliRunner().invoke(main, ["merge", str(t), str(p), "-o", str(tmp_path / "cli"), "--switch-modules", "1"])
    assert r.exit_code == 0, r.output
    merge_folders(t, [p], tmp_path / "api", switching_spec(2, 3, 1))
    got, ref = _all(tmp_path / "cli"), _all(tmp_path / "api")
    assert all(torch.equal(got[n], ref[n]) for n in ref)
    assert torch.equal(got["bert.encoder.layer.0.attention.self.query.weight"],
                       _all(p)["bert.encoder.layer.0.attention.self.query.weight"])  # shift 1: layer 0's attention
    r = CliRunner().invoke(main, ["merge", str(t), str(p), "-o", str(tmp_path / "x"), "--switch-modules", "0",
                                  "--method", "ties", "--base", str(p)])
    assert r.exit_code == 2 and "--method wag" in r.stderr and not (tmp_path / "x").exists()
