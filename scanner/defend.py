"""Defend: choose the merge that removes the most backdoor for the least clean cost, and build it.

The paper's method (WAG: a plain average of the target and its peers) is always tried first.
Then a small, budgeted search over what the paper leaves open: the target's weight in the
average, task-vector methods when a base is known (task arithmetic with λ, TIES and DARE-TIES
at a few densities), and subsets of peers. Every candidate is merged (streaming), loaded and
measured on the probe inputs by the model family:

* the **objective** is the worst *excess* ASR over every verified trigger (the scan's findings
  plus the published triggers that move the target at all): a candidate's ASR minus the median
  ASR of the clean peers for the same trigger. Clean models have natural triggers that no merge
  removes and that are no backdoor; only the excess is;
* the **clean bound**: the family's clean cost (`ModelFamily.clean_cost`; for classifiers the accuracy
  drop on the probe and at a class mix skewed 3:1, each class's recall change discounted by its
  sampling error; for generative models the answer-agreement drop beyond its sampling error or the
  relative rise of the reference answers' loss, whichever is larger) may be at most ``max_clean_drop``.

The last two tries refine: when the merge with the lowest objective breaks the bound and is linear
(the registry's ``linear``), it is blended back toward the target by bisection on the target's kept
share (`_pull_back`); otherwise the two tries go to the rest of the grid. Among the candidates within the
bound, the winner is chosen by the one-standard-error rule (`_one_se_choice`): of those whose objective is
within one binomial standard error of the lowest (and no worse than the paper's WAG), the one that keeps the
least of the target; if none is within the bound, the one with the smallest clean cost wins and the reason
says so. With no trigger to minimise, the paper's WAG is produced (it also
removes triggers the probe cannot see); when it breaks the bound and a base is known, task arithmetic
at λ 0.5 on the sum of task vectors comes next, and only then blends toward the target
(`_build_untargeted`). docs/decisions.md has the measurements behind each rule.

The defended variant is a complete Hugging Face folder (sharded safetensors, config, tokenizer,
and a card listing the merged models as ``base_model`` with ``base_model_relation: merge``).

Example:
    >>> outcome = choose_and_build(family, target, peers, Path("out/defended"), inputs, reference, triggers,
    ...                            base=base_path, floors=peer_medians)
    >>> outcome.spec.method, [c["candidate"] for c in outcome.candidates][:2]
    ('wag', ['wag', 'wag, target weight 0.12'])
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .merge import MergeSpec, get
from .merge.switching import layers_of, switching_spec
from .probe.results import TriggerResult
from .report.render import template
from .sources.model import ResolvedModel

# What a defense cannot see, reported with every scan that builds a defended variant (D39).
BLIND_SPOT = ("The defended variant's ASR and clean cost are read on the probe's inputs only. A backdoor or a loss of "
              "skill outside their domain (an attack trained to survive merging, a task unlike the probe texts) does "
              "not show there: on a merge-aware victim the probe read 13% ASR where the victim's own test data read "
              "84%. Pass inputs from the model's own domain with --probe-data.")


@dataclass
class DefenseOutcome:
    """The defended variant that was built, and every candidate tried (report rows)."""

    spec: MergeSpec
    summary: dict  # what merge_folders returned, with the merged peers' names
    candidates: list[dict] = field(default_factory=list)
    reason: str = ""


@dataclass(eq=False)
class Candidate:
    """One merge the search tries, and what it measured."""

    label: str
    spec: MergeSpec
    peers: list[int]  # indices into the peers given to the search
    root: "Candidate | None" = None  # the grid candidate a blend toward the target refines
    names: list[str] = field(default_factory=list)
    folder: Path | None = None
    summary: dict = field(default_factory=dict)
    worst_asr: float | None = None
    clean: float = 0.0  # agreement with the reference (accuracy for classifiers)
    cost: dict = field(default_factory=dict)  # the family's clean cost; ``drop`` is what the bound reads
    within_bound: bool = False
    worst_n: int = 0  # triggered inputs behind ``worst_asr``

    @property
    def clean_drop(self) -> float:
        return self.cost["drop"]

    def record(self, chosen: bool) -> dict:
        """The candidate as the report lists it (``defense.candidates[]``)."""
        detail = {k: v for k, v in self.cost.items() if k != "drop"}
        return {"candidate": self.label, "method": self.spec.method,
                **{k: v for k, v in self.spec.describe().items() if k != "method"},
                "peers": self.names, "weights": self.summary["weights"], "worst_asr": self.worst_asr,
                "worst_n": self.worst_n, "clean": round(self.clean, 4), "clean_drop": self.clean_drop, **detail,
                "within_bound": self.within_bound, "chosen": chosen}


def card_for(target: ResolvedModel, peers: list[ResolvedModel], spec: MergeSpec, verdict: str | None = None,
             form: str = "model") -> str:
    """The defended variant's model card. ``form`` "adapter": a LoRA adapter of the target's base
    (``base_model`` the base, relation ``adapter``); "model": full weights, a merge of the models."""
    generative = target.is_adapter or str((target.config.get("architectures") or [""])[0]).endswith("ForCausalLM")
    return template("defended_card.md.j2").render(
        target=target, peers=peers, spec=spec.describe(), verdict=verdict, form=form, base=target.adapter_base,
        pipeline_tag="text-generation" if generative else "text-classification")


def cards_for(target: ResolvedModel, peers: list[ResolvedModel], spec: MergeSpec,
              verdict: str | None = None) -> Callable[[str], str]:
    """The card by the form the merge writes (`card_for`'s ``form``), for `ModelFamily.merge`."""
    return lambda form: card_for(target, peers, spec, verdict, form)


def defend(family, target: ResolvedModel, peers: list[ResolvedModel], out: Path, spec: MergeSpec | None = None,
           verdict: str | None = None) -> DefenseOutcome:
    """Build one given merge into ``out`` (no search)."""
    spec = spec or MergeSpec("wag")
    summary = family.merge(target, peers, out, spec, [target.name] + [p.name for p in peers],
                           cards_for(target, peers, spec, verdict))
    return DefenseOutcome(spec, {**summary, "peers": [p.name for p in peers]})


def candidate_specs(n_peers: int, base: Path | None, head_perms: dict[int, list[int]], budget: int,
                    layers: int = 0, clip: float | None = None) -> list[Candidate]:
    """The search space, most promising first. With one or two peers (``layers``: the target's transformer layers),
    module switching (`scanner.merge.switching`, two assignments) comes third and, after task arithmetic and
    TIES at density 0.3, sixth: an average of so few models keeps a third
    or more of the target's weight in every module, where switching keeps no chain of its modules. With
    ``clip`` (the target's task vector is far longer than its peers', `stages.norms`) and a base, WAG with the
    target's task vector shrunk by ``clip`` to the peers' median norm comes second: a backdoor scaled up to
    survive averaging is averaged at its peers' size."""
    all_peers = list(range(n_peers))
    n = n_peers + 1

    def perms_for(idx: list[int]) -> dict[int, list[int]]:
        return {k: head_perms[i] for k, i in enumerate(idx) if i in head_perms}

    out = [Candidate("wag", MergeSpec("wag", head_perms=perms_for(all_peers)), all_peers)]
    alpha = 0.5 / n  # the target at half its uniform weight
    w = [alpha] + [(1 - alpha) / n_peers] * n_peers
    out.append(Candidate(f"wag, target weight {alpha:.2f}", MergeSpec("wag", weights=w, head_perms=perms_for(all_peers)),
                         all_peers))
    if base is not None and clip is not None:
        cw = [clip / n] + [1.0 / n] * n_peers  # base + (clip·τ_target + Σ τ_peer) / n
        out.insert(1, Candidate(f"wag, target's task vector clipped to the peers' median norm (×{clip:.2f})",
                                MergeSpec("task_arithmetic", base=base, weights=cw, lam=1.0,
                                          head_perms=perms_for(all_peers)), all_peers))
    if base is not None:
        for d in (0.3, 0.5):
            out.append(Candidate(f"ties density {d}", MergeSpec("ties", base=base, density=d,
                                                                head_perms=perms_for(all_peers)), all_peers))
        out.append(Candidate("dare_ties density 0.3", MergeSpec("dare_ties", base=base, density=0.3,
                                                                head_perms=perms_for(all_peers)), all_peers))
        out.append(task_arithmetic_candidate(n_peers, base, perms_for(all_peers)))
    if n_peers >= 3:
        for drop in range(n_peers):
            idx = [i for i in all_peers if i != drop]
            out.append(Candidate(f"wag without peer {drop + 1}", MergeSpec("wag", head_perms=perms_for(idx)), idx))
    elif layers >= 2:
        ms = [Candidate((spec := switching_spec(n, layers, shift, head_perms=perms_for(all_peers))).label, spec,
                        all_peers) for shift in (0, 1)]
        ta = [c for c in out if c.spec.method == "task_arithmetic"]
        rest = [c for c in out[2:] if c not in ta]
        out = out[:2] + ms[:1] + ta + rest[:1] + ms[1:] + rest[1:]
    return out[: max(1, budget)]


def task_arithmetic_candidate(n_peers: int, base: Path, head_perms: dict[int, list[int]]) -> Candidate:
    """Task arithmetic at the scale of the task-arithmetic literature: base + 0.5·Σ τᵢ, every model weighted alike.

    WAG is base + mean(τᵢ): each fine-tune's task vector is shrunk to 1/N, and when the peers' task vectors
    point in other directions what is left may be too little to do the task. λ = 0.5 on the sum (Ilharco et
    al. 2023 pick λ in 0.3-0.5 for sums of task vectors) keeps N/2 times the mean, and the target still
    weighs no more than any peer. (Task arithmetic with weights summing to 1 and λ = 1 is WAG itself.)
    """
    spec = MergeSpec("task_arithmetic", base=base, weights=[1.0] * (n_peers + 1), lam=0.5, head_perms=head_perms)
    return Candidate("task_arithmetic λ 0.5 (sum of task vectors)", spec, list(range(n_peers)))


def _pull_back(tried: list[Candidate]) -> Candidate | None:
    """The next try of a bisection on the target's kept share, or ``None`` when there is no need.

    When the grid candidate with the lowest worst-case ASR breaks the clean bound, no candidate
    within the bound is as good, and the merge is linear in the models' weights, the same merge is
    blended back toward the target (``keep·θ_target + (1 − keep)·merged``, `MergeSpec.keep`): along that
    line ASR and clean behaviour move toward the target's, so a bisection on ``keep`` looks for the
    largest share of the merge that still meets the bound. Sparse merges (TIES, DARE) are not pulled back.
    """
    grid = [r for r in tried if r.root is None]
    if not grid or grid[0].worst_asr is None:
        return None
    best = min(grid, key=lambda r: (r.worst_asr, r.clean_drop))
    ok = [r for r in tried if r.within_bound]
    if best.within_bound or (ok and min(r.worst_asr for r in ok) <= best.worst_asr):
        return None
    if not get(best.spec.method).linear:
        return None
    return _blend(tried, best)


def _blend(tried: list[Candidate], root: Candidate) -> Candidate:
    """The next bisection step on the target's kept share for ``root``, from the blends of it already tried."""
    lo, hi = 0.0, 1.0  # kept shares known to break / to meet the bound (1.0 is the target itself)
    for r in tried:
        if r.root is root:
            if r.within_bound:
                hi = min(hi, r.spec.keep)
            else:
                lo = max(lo, r.spec.keep)
    keep = round((lo + hi) / 2, 4)
    return Candidate(f"{root.label}, target kept {keep:g}", dataclasses.replace(root.spec, keep=keep), root.peers,
                     root=root)


@dataclass
class _Search:
    """The measuring half of the search: merge a candidate into scratch, load it, score it."""

    family: object
    target: ResolvedModel
    peers: list[ResolvedModel]
    inputs: object
    reference: torch.Tensor
    triggers: list[TriggerResult]
    floors: list[float]
    max_clean_drop: float
    scratch: Path
    verdict: str | None
    log: Callable[[str], None]
    progress: Callable[[int, int], None]
    total: int = 0
    keep_candidates: Path | None = None  # a copy of every candidate's folder goes here (benchmarks)
    target_pred: torch.Tensor | None = None
    target_loss: float | None = None  # the family's `clean_loss` of the target (generative models)
    tried: list[Candidate] = field(default_factory=list)

    def attempt(self, c: Candidate) -> Candidate:
        c.folder = self.scratch / f"c{len(self.tried)}"
        sub = [self.peers[j] for j in c.peers]
        c.names = [p.name for p in sub]
        c.summary = self.family.merge(self.target, sub, c.folder, c.spec, [self.target.name] + c.names,
                                      cards_for(self.target, sub, c.spec, self.verdict))
        runner = self.family.load(dataclasses.replace(self.target, path=c.folder, ref=c.label, repo_id=c.label))
        pred = self.family.clean_outputs(runner, self.inputs)
        c.clean = self.family.agreement(pred, self.reference)
        loss = self.family.clean_loss(runner, self.inputs, self.reference)
        losses = (loss, self.target_loss) if loss is not None and self.target_loss is not None else None
        c.cost = self.family.clean_cost(pred, self.target_pred, self.reference, losses)
        measured = [self.family.remeasure(runner, self.inputs, t, pred) for t in self.triggers]
        asrs = [max(0.0, m.asr - fl) for m, fl in zip(measured, self.floors)]
        c.worst_asr = round(max(asrs), 4) if asrs else None
        c.worst_n = measured[asrs.index(max(asrs))].n if asrs else 0
        c.within_bound = c.clean_drop <= self.max_clean_drop + 1e-9
        self.tried.append(c)
        if self.keep_candidates is not None:
            shutil.copytree(c.folder, self.keep_candidates / f"c{len(self.tried) - 1}", dirs_exist_ok=True)
        self.progress(len(self.tried), self.total)
        self.log(f"defense candidate {c.label}: worst ASR {c.worst_asr}, clean {c.clean:.3f} "
                 f"({'within' if c.within_bound else 'outside'} the bound)")
        return c


def choose_and_build(family, target: ResolvedModel, peers: list[ResolvedModel], out: Path, inputs,
                     reference: torch.Tensor, triggers: list[TriggerResult], base: Path | None = None,
                     floors: list[float] | None = None, head_perms: dict[int, list[int]] | None = None,
                     max_clean_drop: float = 0.01, budget: int = 8, verdict: str | None = None,
                     log: Callable[[str], None] = lambda s: None,
                     progress: Callable[[int, int], None] = lambda done, total: None,
                     keep_candidates: Path | None = None, clip: float | None = None) -> DefenseOutcome:
    """Search the candidates, move the winner to ``out``, return it with every candidate's numbers.

    ``reference`` is the clean truth for the bound (`ModelFamily.clean_reference`). ``triggers`` are
    measured on every candidate; ``floors`` (one per trigger, default 0) are the clean peers' median
    ASRs, subtracted before taking the worst.
    """
    specs = candidate_specs(len(peers), base, head_perms or {}, budget if triggers else 1,
                            layers_of(target.path, target.name), clip)
    scratch = Path(tempfile.mkdtemp(prefix=".hfscan-defense-", dir=out.parent if out.parent.exists() else None))
    search = _Search(family, target, peers, inputs, reference, triggers, floors or [0.0] * len(triggers),
                     max_clean_drop, scratch, verdict, log, progress, keep_candidates=keep_candidates)
    target_runner = family.load(target)
    search.target_pred = family.clean_outputs(target_runner, inputs)
    search.target_loss = family.clean_loss(target_runner, inputs, reference)
    try:
        if not triggers:
            # no trigger: WAG; only if it costs too much, task arithmetic (with a base) and blends toward the target
            tries = min(3 + (base is not None), budget - 1)
            search.total = 1 + tries
            progress(0, search.total)
            ta = task_arithmetic_candidate(len(peers), base, specs[0].spec.head_perms) if base is not None else None
            win, reason = _build_untargeted(search, specs[0], ta, tries, max_clean_drop)
        else:
            win, reason = _search_targeted(search, specs, budget, max_clean_drop)
        return _install(win, search.tried, out, reason)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _search_targeted(search: _Search, specs: list[Candidate], budget: int, max_clean_drop: float
                     ) -> tuple[Candidate, str]:
    """The grid, then two refining tries (`_pull_back`, else the rest of the grid); the winner and why."""
    refine = 2 if budget >= 4 else 0
    search.total = min(len(specs) + refine, budget)
    search.progress(0, search.total)
    for c in specs[: search.total - refine]:
        search.attempt(c)
    pending = specs[search.total - refine:]
    for _ in range(refine):
        step = _pull_back(search.tried)
        if step is not None:
            search.attempt(step)
        elif pending:
            search.attempt(pending.pop(0))
    tried = search.tried
    ok = [r for r in tried if r.within_bound]
    if ok:
        return _one_se_choice(ok, tried, search, max_clean_drop)
    win = min(tried, key=lambda r: (r.clean_drop, r.worst_asr))
    return win, (f"No candidate kept clean accuracy within {100 * max_clean_drop:.1f} points of the target; "
                 f"the one with the smallest drop ({100 * win.clean_drop:.1f} points) was chosen.")


def target_share(c: Candidate, n_peers: int) -> float:
    """How much of the target's task vector a candidate keeps: its weight's share in a linear merge (WAG 1/n,
    task arithmetic λ·w), 1/n for the disjoint means (TIES, DARE), its share of the blocks for module switching;
    a blend toward the target adds ``keep``."""
    spec, n = c.spec, len(c.peers) + 1
    weights = spec.weights or get(spec.method).default_weights(n)
    if spec.module_weights:
        share = sum(ws[0] / sum(ws) for _, ws in spec.module_weights) / len(spec.module_weights)
    elif spec.method == "wag":
        share = weights[0] / sum(weights)
    elif spec.method in ("task_arithmetic", "dare_linear"):
        share = spec.lam * weights[0]
    else:
        share = 1.0 / n
    return spec.keep + (1.0 - spec.keep) * share


def _one_se_choice(ok: list[Candidate], tried: list[Candidate], search: "_Search",
                   max_clean_drop: float) -> tuple[Candidate, str]:
    """The one-standard-error rule (Breiman): among the candidates within the bound whose worst excess ASR is within
    one binomial standard error of the lowest (and no worse than the paper's WAG, when WAG is within the bound),
    the one that keeps the least of the target (`target_share`). Picking the lowest of eight noisy estimates on
    one probe overfits it; a merge that keeps less of the target also keeps less of what the probe cannot see."""
    best = min(ok, key=lambda r: (r.worst_asr, r.clean_drop))
    n = max(1, best.worst_n)
    q = min(max(best.worst_asr, 1.0 / n), 1.0 - 1.0 / n)
    limit = best.worst_asr + (q * (1.0 - q) / n) ** 0.5
    wag = tried[0] if tried[0].spec.method == "wag" and not tried[0].spec.weights and tried[0].within_bound else None
    if wag is not None:
        limit = min(limit, max(wag.worst_asr, best.worst_asr))
    near = [r for r in ok if r.worst_asr <= limit + 1e-9]
    n_peers = len(search.peers)
    win = min(near, key=lambda r: (target_share(r, n_peers), r.worst_asr, r.clean_drop))
    why = (f"Lowest worst-case ASR in excess of the clean peers' ({best.worst_asr:.3f}) over {len(search.triggers)} "
           f"verified trigger(s) among {len(ok)} of {len(tried)} candidates within the clean bound "
           f"({search.family.describe_bound(max_clean_drop)})")
    if win is best:
        return win, why + "."
    return win, (why + f" was {best.label}; {win.label} ({win.worst_asr:.3f}) is within one standard error of it "
                 f"(≤ {limit:.3f}) and keeps less of the target ({100 * target_share(win, n_peers):.0f}% against "
                 f"{100 * target_share(best, n_peers):.0f}%), so it is chosen: the lowest of several estimates on one "
                 "probe is partly luck, and less of the target is less of what the probe cannot see.")


def _install(win: Candidate, tried: list[Candidate], out: Path, reason: str) -> DefenseOutcome:
    """Move the winning candidate's folder to ``out`` (atomically) and describe every try."""
    from ._fs import atomic_dir

    with atomic_dir(out) as tmp:
        shutil.rmtree(tmp)
        shutil.move(str(win.folder), str(tmp))
    summary = dict(win.summary, output_dir=str(out), peers=win.names)
    return DefenseOutcome(win.spec, summary, [r.record(r is win) for r in tried], reason)


def _build_untargeted(search: _Search, wag: Candidate, ta: Candidate | None, tries: int,
                      max_clean_drop: float) -> tuple[Candidate, str]:
    """No trigger to minimise: the paper's WAG, or the merge nearest to it that meets the clean bound.

    Without an ASR to compare, the rule is how much of the target each candidate keeps: a full merge, in
    which the target weighs no more than any peer, before any blend that keeps more of it. So WAG is
    tried first; if it breaks the bound and a base is known, task arithmetic at λ 0.5 on the sum
    (`task_arithmetic_candidate`). If neither meets the bound, the one with the smaller clean cost is
    blended back toward the target, bisected on ``keep`` for the remaining tries; the smallest ``keep``
    within the bound wins. If no blend meets the bound, the try with the smallest clean cost wins.
    """
    first = search.attempt(wag)
    full = [first]
    if not first.within_bound and ta is not None and tries > 0:
        full.append(search.attempt(ta))
        tries -= 1
    root = min(full, key=lambda r: r.clean_drop)
    for _ in range(tries if not any(r.within_bound for r in full) else 0):
        search.attempt(_blend(search.tried, root))
    search.progress(len(search.tried), len(search.tried))
    return _untargeted_choice(search.tried, full, root, max_clean_drop)


def _untargeted_choice(tried: list[Candidate], full: list[Candidate], root: Candidate,
                       max_clean_drop: float) -> tuple[Candidate, str]:
    first = full[0]
    ok = [r for r in tried if r.within_bound]
    base = "No trigger was found, so there was nothing to minimise: "
    cost = f"the paper's WAG cost {100 * first.clean_drop:.1f} points of clean accuracy (bound {100 * max_clean_drop:.1f})"
    if len(full) > 1:
        cost += f", task arithmetic {100 * full[1].clean_drop:.1f}"
    if first.within_bound:
        return first, base + ("the paper's WAG over the target and all its peers is produced, because the merge also "
                              "removes triggers the probe cannot see.")
    if len(full) > 1 and full[1].within_bound:
        return full[1], base + (f"{cost}, so {full[1].label} is produced: a merge in which the target weighs no more "
                                "than any peer, like WAG, which also removes triggers the probe cannot see.")
    if ok:
        win = min(ok, key=lambda r: r.spec.keep)
        return win, base + (f"{cost}, so {root.label} was blended back toward the target: {win.label} "
                            f"is the largest share of it found within the bound ({len(tried)} tries). A blend removes "
                            "less of what the probe cannot see than a full merge would.")
    win = min(tried, key=lambda r: r.clean_drop)
    return win, base + (f"{cost}, and no blend with the target met the bound in {len(tried)} tries; the one "
                        f"with the smallest drop ({100 * win.clean_drop:.1f} points) was chosen. The peers "
                        "may not be like the target: see the homogeneity check.")
