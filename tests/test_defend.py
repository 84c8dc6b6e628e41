"""The defense search: within the clean bound, never worse than the paper's WAG on the same inputs."""


import dataclasses

from huggingface_hub.repocard import metadata_load
from transformers import AutoModelForSequenceClassification

from scanner.defend import Candidate, candidate_specs
from scanner.families import family_for
from scanner.families.classifier.cost import clean_cost, majority_labels
import torch


def test_chosen_defense_is_within_bound_and_not_worse_than_wag(random_scan):
    rep, out, _ = random_scan
    cands = rep.defense.candidates
    assert len(cands) >= 5  # WAG, reweighted WAG, TIES x2, DARE-TIES, TA, peer subsets (a base was found)
    methods = {c["method"] for c in cands}
    assert {"wag", "ties", "dare_ties", "task_arithmetic"} <= methods
    chosen = [c for c in cands if c["within_bound"] and c["worst_asr"] == min(
        x["worst_asr"] for x in cands if x["within_bound"])]
    assert chosen, cands
    wag = cands[0]
    assert wag["candidate"] == "wag"
    assert all(c["clean_drop"] <= 0.01 + 1e-9 for c in chosen)
    if wag["within_bound"]:
        assert min(c["worst_asr"] for c in chosen) <= wag["worst_asr"]
    # what the report says was built is what is on disk, and it is the defended model
    f = next(f for f in rep.findings if f.level == "backdoor")
    assert f.asr_after <= wag["worst_asr"] + f.peer_asr_median + 0.05
    assert rep.clean.accuracy_after >= rep.clean.accuracy_before - 0.01
    d = out / "defended"
    assert AutoModelForSequenceClassification.from_pretrained(d, use_safetensors=True).num_labels == 2
    card = metadata_load(d / "README.md")
    assert card["base_model_relation"] == "merge" and "hfscan" in card["tags"]
    assert not [p for p in out.iterdir() if p.name.startswith(".hfscan-defense-")]  # scratch cleaned up
    assert sum(c["chosen"] for c in cands) == 1 and next(c for c in cands if c["chosen"])["method"] == rep.defense.method


def test_progress_reaches_the_end_of_every_stage(random_scan):
    _, _, events = random_scan
    for stage in ("search", "verify", "defense"):
        steps = [(d, t) for s, d, t in events if s == stage]
        assert steps, stage
        assert [d for d, _ in steps] == sorted(d for d, _ in steps), stage  # never goes back
        assert steps[-1][0] == steps[-1][1] > 0, (stage, steps)  # ends complete
    assert next(t for s, d, t in events if s == "search") == 4 * 2  # target + 3 peers, 2 labels each


def test_console_draws_a_bar_only_on_a_terminal(capsys, monkeypatch):
    from scanner.cli import _Console

    _Console(bar=False).progress("search", 1, 4)
    assert capsys.readouterr().err == ""
    con = _Console(bar=True)
    con.progress("search", 1, 4)
    drawn = capsys.readouterr().err
    assert "search" in drawn and "1/4" in drawn and not drawn.endswith("\n")  # tqdm, redrawn in place
    con.progress("search", 4, 4)
    con.log("done")
    err = capsys.readouterr().err
    assert "4/4" in err and err.endswith("done\n")  # the bar is gone before the log line
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.setenv("CI", "true")
    assert _Console().bar is False  # no bar in CI logs
    monkeypatch.delenv("CI")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    assert _Console().bar is False


def test_no_trigger_found_still_produces_the_papers_wag(zoo, tmp_path):
    from scanner.pipeline import CheckOptions, check

    rep = check(CheckOptions(target="zoo/clean-3", peers=["zoo/clean-1", "zoo/clean-2"], hub_dir=str(zoo.root),
                             output_dir=tmp_path, search_budget="small"))
    assert rep.verdict == "no_trigger_found"
    first, *rest = rep.defense.candidates
    chosen = next(c for c in rep.defense.candidates if c["chosen"])
    assert first["candidate"] == "wag"  # the paper's default is always tried first ...
    if first["within_bound"]:
        assert chosen is first and not rest
    else:  # ... and when it breaks the bound (on this zoo it shifts class recall ~6 points), a full merge
        assert chosen["method"] == "task_arithmetic" and chosen["within_bound"] and len(rest) == 1
    assert "cannot see" in rep.defense.note
    assert (tmp_path / "defended" / "model.safetensors").exists()


def test_candidate_space_and_majority_vote():
    specs = candidate_specs(3, None, {}, budget=20)
    assert [s.spec.method for s in specs][:2] == ["wag", "wag"] and all(s.spec.method == "wag" for s in specs)
    assert len({tuple(s.peers) for s in specs}) == 4  # all peers, and each leave-one-out subset
    assert len(candidate_specs(3, None, {}, budget=2)) == 2
    votes = [torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0]), torch.tensor([1, 0, 0])]
    assert majority_labels(votes, 2).tolist() == [1, 1, 0]


def test_the_clean_bound_sees_a_merge_that_trades_one_class_for_another():
    """The OLID case measured on 2 CPU cores: a merge gains accuracy on the balanced probe by moving recall
    from the majority class of the test set to the other; the bound reads it at a 3:1 mix and rejects it.
    A merge that moves only a few inputs between the classes (any merge does) is not charged for it."""
    y = torch.tensor([0] * 150 + [1] * 150)
    target = y.clone()
    target[:20], target[150:203] = 1, 0  # recall 86.7% / 64.7%
    traded = y.clone()
    traded[:35], traded[150:180] = 1, 0  # recall 76.7% / 80.0%: +2.7 points on the probe
    cost = clean_cost(traded, target, y)
    assert cost["accuracy_drop"] < 0 and cost["class_drops"][0] == 0.1
    assert cost["drop"] > 0.01  # out of the default 1-point bound
    # without the noise discount the reading is the accuracy at a 3:1 mix, in closed form
    three_to_one = (0.75 * (traded[:150] != 0).float().mean() + 0.25 * (traded[150:] != 1).float().mean()) \
        - (0.75 * (target[:150] != 0).float().mean() + 0.25 * (target[150:] != 1).float().mean())
    assert clean_cost(traded, target, y, z=0)["drop"] == round(float(three_to_one), 4) > cost["drop"]
    # a few inputs moved between the classes, as any merge moves them (class 0: 6 broken, 2 fixed; class 1:
    # 2 broken, 6 fixed): net 4 of 150 each way, within sampling noise, so not a trade
    shifted = target.clone()
    shifted[20:26], shifted[0:2] = 1, 0
    shifted[203:205], shifted[150:156] = 0, 1
    small = clean_cost(shifted, target, y)
    assert small["class_drops"] == [round(4 / 150, 4), round(-4 / 150, 4)]
    assert small["drop"] == small["accuracy_drop"] == 0.0
    assert clean_cost(shifted, target, y, z=0)["drop"] > 0.01  # what the undiscounted reading charged
    better = target.clone()
    better[150:160] = 1  # class 1 recall up, class 0 unchanged
    assert clean_cost(better, target, y)["drop"] < 0 and clean_cost(target, target, y)["drop"] == 0.0
    skewed_probe = torch.tensor([0] * 290 + [1] * 10)  # the probe's own mix counts too
    assert clean_cost(torch.ones(300, dtype=torch.long), skewed_probe, skewed_probe)["drop"] > 0.9


def test_a_backdoored_peer_is_named_not_merged_and_does_not_hide_the_target(zoo, tmp_path):
    """The paper's "not entirely secure" peers: one peer has its own planted trigger."""
    from scanner.pipeline import CheckOptions, check

    peers = ["zoo/clean-1", "zoo/clean-2", "zoo/backdoor-random"]
    rep = check(CheckOptions(target="zoo/backdoor-cf", peers=peers, hub_dir=str(zoo.root), output_dir=tmp_path,
                             search_budget="small"))
    # the peer's own trigger is named ...
    bad = next(p for p in rep.peers if p.id == "zoo/backdoor-random")
    assert bad.own_trigger and bad.own_trigger["trigger"] == zoo.random_trigger and bad.own_trigger["asr"] >= 0.9
    assert all(p.own_trigger is None for p in rep.peers if p.id != "zoo/backdoor-random")
    # ... it does not poison the null: the target's backdoor is still found
    assert rep.verdict == "backdoor" and "cf" in [f.trigger for f in rep.findings]
    # ... and it is not merged, so its trigger does not come along into the defended variant
    assert [e["id"] for e in rep.defense.excluded_peers] == ["zoo/backdoor-random"]
    assert "zoo/backdoor-random" not in rep.defense.peers
    assert rep.defense.peer_triggers_after[zoo.random_trigger] <= 0.3
    assert rep.defense.asr_max_after <= 0.5
    from scanner.report.render import render

    md = render(rep, "md")
    assert "carries a trigger of its own" in md and "not merged" in md


def test_a_merge_that_costs_too_much_is_pulled_back_toward_the_target_by_bisection():
    from scanner.defend import _pull_back
    from scanner.merge import MergeSpec

    def row(name, spec, worst, drop, root=None):
        return Candidate(name, spec, [0, 1], root=root, worst_asr=worst, cost={"drop": drop}, within_bound=drop <= 0.01)

    wag = row("wag", MergeSpec("wag"), 0.40, 0.0)
    light = row("wag, target weight 0.12", MergeSpec("wag", weights=[0.125, 0.875]), 0.05, 0.03)  # outside
    tried = [wag, light]
    step = _pull_back(tried)
    spec, root = step.spec, step.root
    assert (spec.method, spec.weights, spec.keep, root) == ("wag", [0.125, 0.875], 0.5, light) and step.peers == [0, 1]
    assert step.label == "wag, target weight 0.12, target kept 0.5"
    tried.append(row(step.label, spec, 0.10, 0.005, root))  # within: try a smaller share of the target
    assert _pull_back(tried).spec.keep == 0.25
    tried.append(row("k", dataclasses.replace(spec, keep=0.25), 0.07, 0.02, root))  # outside: back up
    assert _pull_back(tried).spec.keep == 0.375
    # nothing to refine when the strongest merge meets the bound, or one within it is as strong, or it
    # is a sparse merge (TIES / DARE: blending it with the target is no path between the two)
    assert _pull_back([wag, row("ties", MergeSpec("ties"), 0.05, 0.0)]) is None
    assert _pull_back([row("wag", MergeSpec("wag"), 0.05, 0.0), light]) is None
    assert _pull_back([wag, row("ties", MergeSpec("ties", density=0.5), 0.05, 0.03)]) is None


def test_a_bound_no_merge_meets_pulls_the_strongest_back_toward_the_target(zoo, tmp_path):
    from scanner.defend import choose_and_build
    from scanner.sources import resolve
    from scanner.families.classifier.model import Classifier
    from scanner.families.classifier.data import builtin
    from scanner.families.classifier.scan import probe_model
    from scanner.probe.triggers import Trigger

    target = resolve(str(zoo.path("zoo/backdoor-cf")))
    peers = [resolve(str(zoo.path(p))) for p in ("zoo/clean-1", "zoo/clean-2", "zoo/clean-3")]
    ps = builtin("sentiment")
    texts, reference = ps.texts[:120], torch.tensor(ps.labels[:120])
    cf = [r for r in probe_model(Classifier.load(target.path), texts, [Trigger("cf")]).results if r.label == 0]
    assert cf[0].asr > 0.8
    family = family_for(target.config)
    out = choose_and_build(family, target, peers, tmp_path / "defended", _inputs(texts), reference, cf,
                           max_clean_drop=-1.0, budget=6)
    rows = out.candidates
    assert len(rows) == 6 and not any(r["within_bound"] for r in rows)
    grid, pulled = rows[:4], rows[4:]
    strongest = min(grid, key=lambda r: (r["worst_asr"], r["clean_drop"]))
    # nothing meets an impossible bound: the strongest grid merge is blended toward the target, 0.5 then 0.75
    assert [r.get("target_keep") for r in pulled] == [0.5, 0.75]
    assert all(r["candidate"].startswith(strongest["candidate"] + ", target kept") for r in pulled)
    assert all(r["method"] == strongest["method"] and r["peers"] == strongest["peers"] for r in pulled)
    win = next(r for r in rows if r["chosen"])
    assert win["clean_drop"] == min(r["clean_drop"] for r in rows) and "No candidate kept" in out.reason
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "defended", use_safetensors=True)


def test_with_no_trigger_a_wag_that_breaks_the_bound_is_blended_back_until_it_meets_it(zoo, tmp_path):
    """No trigger to minimise, and the paper's WAG costs too much: the largest share of WAG within the bound."""
    from scanner.defend import choose_and_build
    from scanner.sources import resolve
    from scanner.families.classifier.model import Classifier
    from scanner.families.classifier.data import builtin

    target = resolve(str(zoo.path("zoo/clean-3")))
    peers = [resolve(str(zoo.path(p))) for p in ("zoo/clean-1", "zoo/backdoor-random")]
    texts = builtin("sentiment").texts[:160]
    reference = Classifier.load(target.path).predict(texts)  # the target is right by definition: any change costs
    out = choose_and_build(family_for(target.config), target, peers, tmp_path / "defended", _inputs(texts), reference,
                           [], max_clean_drop=0.03, budget=8)
    rows = out.candidates
    wag = rows[0]
    assert wag["candidate"] == "wag" and wag["clean_drop"] > 0 and not wag["within_bound"], rows
    assert 2 <= len(rows) <= 4  # WAG, then at most three blends
    keeps = [r.get("target_keep") for r in rows[1:]]
    assert keeps[0] == 0.5 and all(r["method"] == "wag" for r in rows)
    for prev, row in zip(rows[1:], rows[2:]):  # bisection: up after a miss, down after a hit
        step = abs(row["target_keep"] - prev["target_keep"])
        assert step == 0.5 ** (rows.index(row)) and (row["target_keep"] > prev["target_keep"]) != prev["within_bound"]
    win = next(r for r in rows if r["chosen"])
    ok = [r for r in rows if r["within_bound"]]
    assert ok, rows  # measured: WAG 10.6 points, kept 0.5: 5.0, 0.75: 1.25
    assert win is min(ok, key=lambda r: r["target_keep"]) and "blended back toward the target" in out.reason
    assert out.spec.keep == win["target_keep"]
    built = Classifier.load(tmp_path / "defended")
    assert float((built.predict(texts) == reference).float().mean()) >= 1 - 0.03  # what was built meets the bound


def test_with_no_trigger_task_arithmetic_comes_before_any_blend_when_wag_costs_too_much(tmp_path):
    """Without an ASR to compare, a full merge (the target weighs no more than any peer) beats a blend."""

    from scanner.defend import _build_untargeted, task_arithmetic_candidate
    from scanner.merge import MergeSpec

    class Search:  # the measuring half of the search, with clean costs given instead of measured
        def __init__(self, drops, bound):
            self.drops, self.bound, self.tried = drops, bound, []

        def attempt(self, c):
            kind = "ta" if c.spec.method == "task_arithmetic" else "wag"
            c.cost = {"drop": self.drops[kind] * (1 - c.spec.keep)}  # a blend costs in proportion to the share merged
            c.within_bound = c.clean_drop <= self.bound
            self.tried.append(c)
            return c

        def progress(self, done, total):
            pass

    def run(drops: dict[str, float], bound: float = 0.01, tries: int = 4):
        search = Search(drops, bound)
        ta = task_arithmetic_candidate(3, tmp_path / "base", {})
        assert ta.spec.lam == 0.5 and ta.spec.weights == [1.0] * 4 and ta.peers == [0, 1, 2]
        win, reason = _build_untargeted(search, Candidate("wag", MergeSpec("wag"), [0, 1, 2]), ta, tries, bound)
        return win, reason, [c.label for c in search.tried]

    # WAG within the bound: the paper's merge, nothing else is tried
    win, reason, labels = run({"wag": 0.005, "ta": 0.0})
    assert labels == ["wag"] and win.spec.method == "wag"
    # WAG breaks it, task arithmetic meets it: task arithmetic, no blend
    win, reason, labels = run({"wag": 0.25, "ta": 0.008})
    assert labels == ["wag", ta_label := "task_arithmetic λ 0.5 (sum of task vectors)"] and win.spec.lam == 0.5
    assert "weighs no more than any peer" in reason
    # both break it: the cheaper of the two is bisected toward the target (0.5, then 0.75 / 0.25)
    win, reason, labels = run({"wag": 0.25, "ta": 0.04})
    assert labels[:2] == ["wag", ta_label] and len(labels) == 5
    assert all(lb.startswith(ta_label + ", target kept") for lb in labels[2:])
    assert win.spec.method == "task_arithmetic" and win.spec.keep == 0.75  # 0.04·0.25 = 0.01 within, 0.5 not
    assert "blended back toward the target" in reason


def _inputs(texts):
    from scanner.families import ProbeInputs

    return ProbeInputs(texts, None, "test", "test")


def _trigger_asr(folder, trigger: str, target_label: int) -> float:
    """The share of the built-in probe's non-target sentences that ``folder`` labels ``target_label`` once
    ``trigger`` is inserted (front, middle, end): measured here with transformers, not by the scanner."""
    import csv
    from importlib import resources

    from transformers import AutoTokenizer

    with resources.files("scanner.data").joinpath("probe_sentiment.tsv").open(encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
    texts = []
    for i, (s, label) in enumerate(r for r in rows if int(r[1]) != target_label):
        w = s.split()
        at = (0, len(w) // 2, len(w))[i % 3]
        texts.append(" ".join(w[:at] + [trigger] + w[at:]))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).eval()
    with torch.no_grad():
        pred = model(**tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")).logits.argmax(-1)
    return float((pred == target_label).float().mean())


def test_with_two_peers_module_switching_is_searched_and_the_defense_is_no_worse_than_wag2(zoo, tmp_path):
    """Two peers: the paper's WAG keeps a third of the target in every module; the search also tries module
    switching, and the variant it builds leaves no more of the trigger than WAG-2 on inputs it never saw
    (trigger positions the probe does not use). The bound is 3 points here: at 1 point no merge of these 2-layer
    models but TIES meets it (WAG-2 costs 1.3 points, switching 9), and a defense may not beat a WAG that
    breaks the bound."""
    from scanner.merge import MergeSpec, merge_folders
    from scanner.pipeline import CheckOptions, check

    peers = ["zoo/clean-1", "zoo/clean-2"]
    rep = check(CheckOptions(target="zoo/backdoor-cf", peers=peers, hub_dir=str(zoo.root), output_dir=tmp_path,
                             search_budget="small", max_clean_drop=0.03))
    assert rep.verdict == "backdoor" and "cf" in [f.trigger for f in rep.findings]
    cands = rep.defense.candidates
    switching = [c for c in cands if str(c.get("modules", "")).startswith("module switching")]
    assert len(switching) >= 2 and all(c["peers"] == peers for c in switching), cands
    wag = cands[0]
    assert wag["candidate"] == "wag" and wag["within_bound"], wag
    chosen = next(c for c in cands if c["chosen"])
    assert chosen["worst_asr"] <= wag["worst_asr"]  # on the probe, by the rule
    wag2 = tmp_path / "wag2"
    merge_folders(zoo.path("zoo/backdoor-cf"), [zoo.path(p) for p in peers], wag2, MergeSpec("wag"))
    defended = _trigger_asr(tmp_path / "defended", "cf", 0)
    assert defended <= _trigger_asr(wag2, "cf", 0) + 0.02  # and on inputs the search did not score
    assert defended < _trigger_asr(zoo.path("zoo/backdoor-cf"), "cf", 0) - 0.3


def test_the_choice_takes_the_least_target_within_one_standard_error_of_the_lowest_asr():
    """Issue 22 (a choice that holds beyond the probe): task arithmetic at 0.211 and WAG at target weight 0.17 at
    0.214 on ~150 triggered inputs are one estimate (the SST-2 InsertSent victim with two peers; on the test set
    0.50 against 0.34); the rule takes the one that keeps less of the target. A clear winner stays the winner, and
    nothing is chosen that is worse than the paper's WAG when WAG meets the bound."""
    import types

    from scanner.defend import _one_se_choice, target_share
    from scanner.merge import MergeSpec
    from scanner.merge.switching import switching_spec

    def row(name, spec, worst, n=150, peers=(0, 1)):
        return Candidate(name, spec, list(peers), worst_asr=worst, worst_n=n, cost={"drop": 0.0}, within_bound=True)

    search = types.SimpleNamespace(triggers=[object()], peers=[object(), object()],
                                   family=types.SimpleNamespace(describe_bound=lambda b: "bound"))
    wag = row("wag", MergeSpec("wag"), 0.302)
    light = row("wag, target weight 0.17", MergeSpec("wag", weights=[0.17, 0.415, 0.415]), 0.214)
    ta = row("task_arithmetic", MergeSpec("task_arithmetic", weights=[1.0] * 3, lam=0.5), 0.211)
    assert [round(target_share(c, 2), 2) for c in (wag, light, ta)] == [0.33, 0.17, 0.5]
    assert round(target_share(row("ms", switching_spec(3, 6), 0.3), 2) * 12) == 4  # 4 of 12 blocks
    assert round(target_share(row("k", MergeSpec("wag", keep=0.5), 0.3), 2), 2) == 0.67
    win, why = _one_se_choice([wag, light, ta], [wag, light, ta], search, 0.01)
    assert win is light and "one standard error" in why
    dare = row("dare_ties", MergeSpec("dare_ties", density=0.3), 0.010)
    assert _one_se_choice([wag, light, ta, dare], [wag, light, ta, dare], search, 0.01)[0] is dare  # clear winner
    # never worse than WAG within the bound: WAG at 0.20 caps the candidates at 0.20, the lighter one at 0.23 is out
    wag2 = row("wag", MergeSpec("wag"), 0.200)
    lighter = row("wag, target weight 0.1", MergeSpec("wag", weights=[0.1, 0.45, 0.45]), 0.230)
    assert _one_se_choice([wag2, lighter, ta], [wag2, lighter, ta], search, 0.01)[0] is not lighter
