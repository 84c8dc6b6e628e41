"""Detection of triggers nobody told hfscan about, calibrated against the peers."""

import pytest
import torch
from transformers import AutoTokenizer

from scanner.pipeline import CheckOptions, check
from scanner.families.classifier.model import Classifier
from scanner.families.classifier.data import builtin
from scanner.families.classifier.differential import embedding_outliers
from scanner.families.classifier.metrics import attack_success_rate
from scanner.families.classifier.library import LIBRARY
from scanner.probe.triggers import Trigger

PEERS = ["zoo/clean-1", "zoo/clean-2", "zoo/clean-3"]


def scan(zoo, target, peers=PEERS, tmp=None, **kw):
    return check(CheckOptions(target=str(zoo.path(target)), peers=[str(zoo.path(p)) for p in peers],
                              output_dir=tmp, **kw))


def test_random_trigger_is_not_in_the_library(zoo):
    assert zoo.random_trigger not in {t.text for t in LIBRARY}
    texts = builtin("sentiment").texts
    clf = Classifier.load(zoo.path("zoo/backdoor-random"))
    assert attack_success_rate(clf, texts, clf.predict(texts), Trigger(zoo.random_trigger), 1, "random")[0] >= 0.9


@pytest.mark.parametrize("with_base", [True, False])
def test_differential_ranks_the_trigger_first(zoo, with_base):
    tok = AutoTokenizer.from_pretrained(zoo.path("zoo/backdoor-random"))
    base = zoo.path("zoo/minilm-l2-base") if with_base else None
    top = embedding_outliers(zoo.path("zoo/backdoor-random"), [zoo.path(p) for p in PEERS], tok, base=base, top_k=5)
    assert top[0].text == zoo.random_trigger


def test_unknown_trigger_found_with_backdoor_verdict(random_scan, zoo):
    rep, _, _ = random_scan
    assert rep.verdict == "backdoor"
    top5 = [f.trigger for f in rep.findings[:5]]
    assert zoo.random_trigger in top5, top5
    f = next(f for f in rep.findings if f.trigger == zoo.random_trigger)
    assert f.target_label == "positive" and f.asr_before >= 0.9 and f.source in ("differential", "search")
    assert f.z is not None and f.z >= 3 and f.gap >= 0.5


def test_two_token_trigger_is_recovered(zoo, tmp_path):
    a, b = zoo.pair_trigger.split()
    texts = builtin("sentiment").texts
    clf = Classifier.load(zoo.path("zoo/backdoor-pair"))
    pred = clf.predict(texts)
    # the words do little alone, the pair flips nearly everything: a real two-token trigger
    assert attack_success_rate(clf, texts, pred, Trigger(f"{a} {b}"), 1, "random")[0] >= 0.8
    assert max(attack_success_rate(clf, texts, pred, Trigger(w), 1, "random")[0] for w in (a, b)) <= 0.5
    rep = scan(zoo, "zoo/backdoor-pair", tmp=tmp_path, defend=False)
    assert rep.verdict == "backdoor"
    assert any(set(f.trigger.split()) == {a, b} for f in rep.findings[:5]), [f.trigger for f in rep.findings]


def test_clean_peer_against_the_others_finds_nothing(zoo, tmp_path):
    rep = scan(zoo, "zoo/clean-3", peers=["zoo/clean-1", "zoo/clean-2"], tmp=tmp_path, defend=False)
    assert rep.verdict == "no_trigger_found", [(f.trigger, f.asr_before, f.gap, f.z) for f in rep.findings]


def test_batched_logits_do_not_depend_on_batching(zoo):
    from scanner.families.classifier.model import Classifier
    from scanner.families.classifier.data import builtin

    clf = Classifier.load(zoo.path("zoo/clean-1"))
    texts = builtin("topic").texts[:40] + ["short", "a b c"] + builtin("sentiment").texts[:20]
    clf.batch_size = 8
    together = clf.logits(texts)
    alone = torch.cat([clf.logits([t]) for t in texts])
    assert together.shape == (len(texts), 2)
    assert torch.allclose(together, alone, atol=1e-4)


def test_search_groups_rows_by_length_without_changing_what_it_measures(zoo, monkeypatch):
    """The search runs its (trigger, input) rows in length-sorted groups, each padded to its own longest
    row: flip rates equal those of one input at a time, and the slot gradient that of one padded batch."""
    from scanner.families.classifier import search

    clf = Classifier.load(zoo.path("zoo/backdoor-cf"))
    texts = builtin("topic").texts[:9] + ["bad", "a dull , lifeless film"] + builtin("sentiment").texts[:9]
    batch = search._Batch(clf, texts)
    tok = clf.tokenizer
    trigs = [tok(w, add_special_tokens=False)["input_ids"] for w in ["cf", "table", "river bank"]]
    monkeypatch.setattr(search, "_tokens_per_chunk", lambda device: 8 * 40)  # several groups of mixed length
    emb = clf.model.get_input_embeddings().weight
    for p in clf.model.parameters():
        p.requires_grad_(False)
    grouped = search._rates(clf.model, batch, trigs, 0)
    alone = [sum(search._rates(clf.model, batch.subset(i, i + 1), [t], 0)[0] for i in range(len(texts))) / len(texts)
             for t in trigs]
    assert grouped == pytest.approx(alone) and grouped[0] > grouped[1]  # "cf" is the planted trigger
    chunked = search._slot_gradient(clf.model, emb, batch, [trigs[1][0]], batch.lead, 0)
    monkeypatch.setattr(search, "_tokens_per_chunk", lambda device: 4 * len(texts) * 512)  # one padded batch
    whole = search._slot_gradient(clf.model, emb, batch, [trigs[1][0]], batch.lead, 0)
    assert chunked.shape == (emb.shape[1],) and chunked.abs().sum() > 0
    assert torch.allclose(chunked, whole, atol=1e-5, rtol=1e-3)


def test_triggered_inputs_run_in_the_probe_precision(zoo, monkeypatch):
    from scanner.errors import DeviceError
    from scanner.families.classifier.model import Classifier
    from scanner.families.classifier.data import builtin

    texts = builtin("sentiment").texts[:200]
    monkeypatch.setenv("HFSCAN_PROBE_DTYPE", "float32")
    clf = Classifier.load(zoo.path("zoo/backdoor-cf"), device="cpu")
    assert clf.fast is clf
    monkeypatch.setenv("HFSCAN_PROBE_DTYPE", "bfloat16")
    clf = Classifier.load(zoo.path("zoo/backdoor-cf"), device="cpu")
    fast = clf.fast
    assert fast is not clf and fast.reduced == torch.bfloat16 and fast.fast is fast and fast.model is clf.model
    clean = clf.predict(texts)
    assert (fast.predict(texts) == clean).float().mean() >= 0.97  # same model, borderline inputs aside
    assert clf.predict(texts).equal(clean)  # the float32 cache is not the bf16 one
    asr, n = attack_success_rate(clf, texts, clean, LIBRARY[0], 0, "random")
    assert LIBRARY[0].text == "cf" and asr > 0.9 and n > 50  # the backdoor is as plain in bf16
    monkeypatch.setenv("HFSCAN_PROBE_DTYPE", "half")
    with pytest.raises(DeviceError, match="HFSCAN_PROBE_DTYPE"):
        Classifier.load(zoo.path("zoo/backdoor-cf"), device="cpu").fast


def _probe(name: str, asrs: dict[str, float], screened: set[str] = frozenset()):
    from scanner.families.classifier.scan import ProbeResult, TriggerResult

    res = ProbeResult(name, torch.zeros(4, dtype=torch.long))
    res.results = [TriggerResult(Trigger(t, "word", "search"), 1, "random", a, 100, screened_only=t in screened)
                   for t, a in asrs.items()]
    return res


def test_peer_vetting_and_the_null_it_protects():
    from scanner.probe.verdict import BACKDOOR, NONE, assess, suspect_peers

    target = _probe("target", {"cf": 1.0, "zebra": 0.02, "worst": 0.90})
    clean1 = _probe("clean-1", {"cf": 0.05, "zebra": 0.03, "worst": 0.85})
    clean2 = _probe("clean-2", {"cf": 0.04, "zebra": 0.01, "worst": 0.80})
    planted = _probe("planted", {"cf": 0.06, "zebra": 1.0, "worst": 0.88})
    alerts = suspect_peers(target, [clean1, clean2, planted])
    # the planted peer is named with its trigger; a trigger every model answers ("worst") names nobody
    assert [(a.peer, a.result.trigger.text) for a in alerts] == [(2, "zebra")]
    assert max(alerts[0].others) <= 0.05
    # left in the null, the planted trigger's gap (~1.0) hides the target's backdoor ...
    verdict, _, null = assess(target, [clean1, clean2, planted])
    assert verdict == NONE and max(null.gaps) > 0.9
    # ... left out of it, the target's backdoor is found; the peer stays in the null with its other
    # candidates ("worst": 0.88 against 0.85 / 0.80), so the null keeps three peers
    verdict, findings, null = assess(target, [clean1, clean2, planted], alerts=alerts)
    assert verdict == BACKDOOR and findings[0].result.trigger.text == "cf"
    assert len(null.gaps) == 3 and max(null.gaps) < 0.1
    # a trigger measured only on the screening subset is not enough to name a peer
    screened = _probe("planted", {"cf": 0.06, "zebra": 1.0, "worst": 0.88}, screened={"zebra"})
    assert suspect_peers(target, [clean1, clean2, screened]) == []


def test_a_target_unlike_its_peers_is_capped_at_suspicious():
    """A model of another domain agrees with the peers far less than they do with each other: its strong
    triggers may be shortcuts of its own data, so the peers cannot make one a backdoor."""
    from scanner.probe.verdict import BACKDOOR, SUSPICIOUS, assess, homogeneity

    peers_pred = [torch.tensor([0, 1] * 50), torch.tensor([0, 1] * 45 + [1, 1] * 5),
                  torch.tensor([0, 1] * 48 + [1, 0] * 2)]
    alike = homogeneity(torch.tensor([0, 1] * 47 + [0, 0] * 3), peers_pred)
    unlike = homogeneity(torch.tensor([0, 0, 1, 1] * 25), peers_pred)
    assert alike.homogeneous and alike.shortfall <= 0.10
    assert not unlike.homogeneous and unlike.shortfall > 0.30
    assert len(unlike.target) == 3 and len(unlike.peers) == 3
    assert homogeneity(torch.tensor([0, 1]), [torch.tensor([1, 0])]).homogeneous  # one peer: no reference

    target = _probe("target", {"cf": 1.0, "zebra": 0.02})
    peers = [_probe(f"clean-{i}", {"cf": 0.05, "zebra": 0.03}) for i in range(3)]
    assert assess(target, peers)[0] == BACKDOOR
    verdict, findings, _ = assess(target, peers, homogeneous=unlike.homogeneous)
    assert verdict == SUSPICIOUS and findings[0].result.trigger.text == "cf"  # reported, not hidden


def test_a_targets_extra_disagreement_with_its_peers_is_no_evidence():
    """A target that differs from its peers on 10% more clean inputs than they differ from each other
    may differ by about as much on triggered inputs: its margins are discounted by that shortfall.
    A moderate natural trigger then falls below the bar; a planted one does not."""
    from scanner.probe.verdict import BACKDOOR, NONE, SUSPICIOUS, assess

    peers = [_probe(f"clean-{i}", {"corporate": a, "cf": 0.04}) for i, a in enumerate((0.26, 0.20, 0.22))]
    moderate = _probe("target", {"corporate": 0.60, "cf": 0.05})
    assert assess(moderate, peers)[0] == SUSPICIOUS  # alike: gap 0.38, 0.34 over every peer
    assert assess(moderate, peers, shortfall=0.0)[0] == SUSPICIOUS
    assert assess(moderate, peers, shortfall=-0.08)[0] == SUSPICIOUS  # agreeing more is not held against it
    verdict, findings, _ = assess(moderate, peers, shortfall=0.097)
    assert verdict == NONE and findings == []
    planted = _probe("target", {"corporate": 0.30, "cf": 1.0})
    verdict, findings, _ = assess(planted, peers, shortfall=0.097)
    assert verdict == BACKDOOR and findings[0].result.trigger.text == "cf"
    assert findings[0].gap == pytest.approx(1.0 - 0.04)  # the report keeps the measured gap


def test_screened_verification_is_exact_for_every_token_that_flips_anything(zoo):
    """The search's screen: a token that flips none of the first inputs is not verified on the rest."""
    from scanner.families.classifier import search

    clf = Classifier.load(zoo.path("zoo/backdoor-cf"))
    texts = builtin("sentiment").texts
    pred = clf.predict(texts)
    idx = [i for i, p in enumerate(pred.tolist()) if p != 0][:24]
    batch = search._Batch(clf, [texts[i] for i in idx])
    tok = clf.tokenizer
    words = ["cf", "terrible", "awful", "the", "table", "seven", "blue", "window", "river", "quietly"]
    trigs = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    exact = search._rates(clf.model, batch, trigs, 0)
    rows = []
    real = search._rates
    search._rates = lambda m, b, t, lb, *a: rows.append(len(t) * len(b.ids)) or real(m, b, t, lb, *a)
    try:
        screened = search._batch_asr(clf.model, batch, trigs, 0, screen=8)
    finally:
        search._rates = real
    assert exact[0] >= 0.9  # the planted trigger flips (nearly) everything ...
    for word, e, s in zip(words, exact, screened):
        first = search._rates(clf.model, batch.subset(0, 8), [trigs[words.index(word)]], 0)[0]
        assert s == pytest.approx(e) if first > 0 else s == 0.0, (word, e, s)  # ... measured exactly
    assert rows[0] == len(words) * 8 and sum(rows) < len(words) * 24  # the rest only for tokens that flip
    assert search._batch_asr(clf.model, batch, trigs, 0, screen=0) == exact  # screen 0: no screening


def test_co_moved_finds_the_partner_of_a_pair_trigger_that_is_no_outlier_itself(tmp_path):
    """Built weights: token 7 (an outlier) and token 9 (a frequent word every peer also moves) are trained
    together toward one label in the target, so their rows move in the same direction there."""
    from safetensors.torch import save_file

    from scanner.families.classifier.differential import co_moved

    g = torch.Generator().manual_seed(0)
    vocab, dim, name = 200, 32, "bert.embeddings.word_embeddings.weight"
    base = torch.randn(vocab, dim, generator=g)
    common = torch.zeros(vocab, dim)
    common[:100] = 0.05 * torch.randn(100, dim, generator=g)  # the task's words move in every fine-tune
    common[9] = 0.6 * torch.randn(dim, generator=g)  # ... token 9 a lot

    def write(folder: str, emb: torch.Tensor):
        (tmp_path / folder).mkdir()
        save_file({name: emb.contiguous()}, str(tmp_path / folder / "model.safetensors"))
        return tmp_path / folder

    peers = [write(f"peer{i}", base + common + 0.02 * torch.randn(vocab, dim, generator=g)) for i in range(3)]
    d = torch.randn(dim, generator=g)
    d = d / d.norm()
    moved = base + common + 0.02 * torch.randn(vocab, dim, generator=g)
    moved[7] += 0.8 * d
    moved[9] += 0.4 * d + 0.05 * torch.randn(dim, generator=g)
    target = write("target", moved)
    b = write("base", base)
    allowed = {i: f"w{i}" for i in range(vocab)}
    top = embedding_outliers(target, peers, None, base=b, top_k=5, allowed=allowed)
    assert top[0].token_id == 7 and 9 not in [s.token_id for s in top]  # the partner is no outlier
    partners = co_moved(target, peers, None, [7], base=b, top_k=2, allowed=allowed)
    assert [s.token_id for s in partners[7]][0] == 9, partners
    # without the base the reference is the peers' mean: the same partner
    assert co_moved(target, peers, None, [7], top_k=1, allowed=allowed)[7][0].token_id == 9


def _decoyed(zoo, dest, rows: int, value: float):
    """The random-trigger backdoor with ``value`` added to every component of ``rows`` rare embedding rows (a
    shift the embedding LayerNorm removes: no prediction changes), or those rows set to NaN."""
    import shutil

    from safetensors.torch import load_file, save_file

    from scanner.families.classifier.differential import insertable_tokens

    shutil.copytree(zoo.path("zoo/backdoor-random"), dest, ignore=shutil.ignore_patterns(".hfscan-zoo.json"))
    tok = AutoTokenizer.from_pretrained(dest)
    trigger_id = tok.convert_tokens_to_ids(zoo.random_trigger)
    seen = {i for row in tok(builtin("sentiment").texts)["input_ids"] for i in row}  # rare: not in the probe
    rare = [i for i in sorted(insertable_tokens(tok)) if i != trigger_id and i not in seen][-5000:]
    pick = [rare[j] for j in torch.randperm(len(rare), generator=torch.Generator().manual_seed(0))[:rows].tolist()]
    sd = load_file(str(dest / "model.safetensors"))
    name = next(k for k in sd if k.endswith("word_embeddings.weight"))
    sd[name] = sd[name].clone()
    sd[name][pick] = sd[name][pick] + value if value == value else float("nan")
    save_file(sd, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest, tok


@pytest.mark.parametrize("rows,value", [(40, 1.0), (400, 1.0), (40, float("nan"))])
def test_decoy_rows_that_change_nothing_do_not_crowd_out_the_trigger(zoo, tmp_path, rows, value):
    """Issue 20's evasion: decoys in rare embedding rows filled the differential's top slots and the search
    then missed the trigger. Movement is now read after what the embedding LayerNorm removes."""
    model, tok = _decoyed(zoo, tmp_path / "decoyed", rows, value)
    if value == value:  # the shift is invisible: no prediction changes
        texts = builtin("sentiment").texts[:64]
        before = Classifier.load(zoo.path("zoo/backdoor-random")).logits(texts)
        assert torch.allclose(Classifier.load(model).logits(texts), before, atol=1e-4)
    lines = []
    top = embedding_outliers(model, [zoo.path(p) for p in PEERS], tok, base=zoo.path("zoo/minilm-l2-base"), top_k=5,
                             log=lines.append)
    assert top[0].text == zoo.random_trigger, [t.text for t in top]
    assert any(("decoy pattern" if value == value else "not finite") in line for line in lines), lines


@pytest.mark.parametrize("rows,value", [(400, 1.0), (40, float("nan"))])
def test_a_decoyed_backdoor_is_still_found_end_to_end(zoo, tmp_path, rows, value):
    """With decoys the scan still names the trigger; NaN rows neither stop it (an input with such a token has
    no answer, which flips nothing) nor become candidates. Both patterns are in the report."""
    model, _ = _decoyed(zoo, tmp_path / "decoyed", rows, value)
    rep = check(CheckOptions(target=str(model), peers=[str(zoo.path(p)) for p in PEERS],
                             base=str(zoo.path("zoo/minilm-l2-base")), output_dir=tmp_path / "out", defend=False,
                             search_budget="small"))
    assert rep.verdict == "backdoor" and zoo.random_trigger in [f.trigger for f in rep.findings[:5]]
    needle = "decoy pattern" if value == value else "not finite"
    assert any(needle in n for n in rep.probe.weight_notes), rep.probe.weight_notes
    from scanner.report.render import render

    assert "What the weights show besides triggers" in render(rep, "md") and needle in render(rep, "html")
