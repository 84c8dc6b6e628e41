"""Defend: choose the merge that removes the most backdoor for the least clean cost, re-probe it.

The paper's method (WAG: a plain average of the target and its peers) is always tried first.
Then a small, budgeted search over what the paper leaves open: the target's weight in the
average, task-vector methods when a base is known (task arithmetic with λ, TIES and DARE-TIES
at a few densities), and subsets of peers. Every candidate is merged (streaming, a second or two
for a small model), loaded and measured on the probe set:

* the **objective** is the worst *excess* ASR over every verified trigger (the scan's findings
  plus the published triggers that move the target at all): a candidate's ASR minus the median
  ASR of the clean peers for the same trigger. Clean models have natural triggers ("worst"
  flips sentiment) that no merge removes and that are no backdoor; only the excess is;
* the **clean bound**: accuracy on the probe labels (or, without labels, on the majority vote of
  the target and its peers, a proxy for the truth) may drop by at most ``max_clean_drop`` below
  the target's, at the probe's own class mix *and* at a mix skewed 3:1 toward any one class, with
  each class's recall change discounted by its sampling error (`clean_cost`). The built-in probes
  are class-balanced, deployments rarely are, and a merge that trades one class's recall for
  another's looks free on a balanced probe. (Measured on 2 CPU cores, 150-step OLID models: a
  DARE-TIES merge gained 2.7 points on the balanced probe by moving 10 points of recall from "not
  offensive" to "offensive", and cost 7.6 points on OLID test, 72% "not offensive". Without the
  discount the same reading also rejected good merges that moved a few inputs between classes: AG
  News ASR after the 2-peer defense rose from 2.1% to 14.9%.)

The last two tries refine: when the merge with the lowest objective breaks the bound and is linear
(WAG, task arithmetic), it is blended back toward the target by bisection on the target's kept share
(`_pull_back`), so a strong merge that costs too much is traded for the strongest blend of it that
fits the bound; otherwise the two tries go to the rest of the grid.
The winner minimises the objective among candidates within the bound; if none is within it, the
one with the smallest clean cost wins and the report says the bound could not be met. With no
trigger to minimise (none found in the target, none of its own in a merged peer): the paper's WAG is
produced (it also removes triggers the probe cannot see) and the report says so; when WAG itself
breaks the clean bound and a base is known, task arithmetic at λ 0.5 on the sum of task vectors (the
literature's scale, which WAG's mean shrinks) is tried next, and only if that breaks it too is
the cheaper of the two blended back toward the target by the same bisection on the kept share. (Measured
on 2 CPU cores, 150-step OLID models: WAG with the peers cost 25-29 points of probe accuracy; blends of
it within the bound kept 87.5% of the target and its backdoor (ASR 98-99%); task arithmetic at λ 0.5
cost under a point on the test set and took a syntactic backdoor from 97.9% to 65.0%, its floor 66.7%.)

The defended variant is a complete Hugging Face folder (sharded safetensors, config, tokenizer,
and a card listing the merged models as ``base_model`` with ``base_model_relation: merge``).

Example:
    >>> outcome = choose_and_build(target, peers, Path("out/defended"), texts, reference, triggers,
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

from .hub import ResolvedModel
from .merge import MergeSpec, merge_folders
from .probe.classifier import Classifier
from .probe.scan import TriggerResult, remeasure
from .report.render import environment


@dataclass
class DefenseOutcome:
    path: Path
    spec: MergeSpec
    summary: dict  # what merge_folders returned
    worst_asr: float | None = None
    clean_score: float | None = None  # accuracy (labels or majority vote) of the chosen variant
    candidates: list[dict] = field(default_factory=list)  # every candidate tried, for the report
    reason: str = ""


def card_for(target: ResolvedModel, peers: list[ResolvedModel], spec: MergeSpec, verdict: str | None = None) -> str:
    return environment().get_template("defended_card.md.j2").render(
        target=target, peers=peers, spec=spec.describe(), verdict=verdict
    )


def defend(
    target: ResolvedModel,
    peers: list[ResolvedModel],
    out: Path,
    spec: MergeSpec | None = None,
    verdict: str | None = None,
    progress: bool | None = None,
) -> DefenseOutcome:
    """Build one given merge into ``out`` (no search)."""
    spec = spec or MergeSpec("wag")
    summary = merge_folders(
        target.path,
        [p.path for p in peers],
        out,
        spec,
        names=[target.name] + [p.name for p in peers],
        card=card_for(target, peers, spec, verdict),
        progress=progress,
    )
    return DefenseOutcome(out, spec, summary)


SKEW = 3.0  # the class mix the bound also reads: one class 3x as common as each other one
NOISE_Z = 1.645  # a class's recall change counts beyond its one-sided 95% paired sampling error only


def clean_cost(pred: torch.Tensor, target_pred: torch.Tensor, reference: torch.Tensor,
               skew: float = SKEW, z: float = NOISE_Z) -> dict:
    """How much clean accuracy a candidate loses against the target, as the bound reads it.

    ``drop`` is the larger of two readings:

    * the accuracy drop on the probe as it is (``accuracy_drop``);
    * the worst drop at a class mix where one class is ``skew`` times as common as each other one (3:1
      for two classes: OLID test is 72% "not offensive"), from the per-class recall changes. Accuracy is
      linear in the mix, so this is ``((skew - 1)·d_c + Σ d) / (K - 1 + skew)``, maximised over c.
      Each recall change ``d_c`` is first shrunk toward zero by ``z`` standard errors of a paired
      difference (``b`` inputs of the class the candidate breaks, ``g`` it fixes:
      ``se² = (b + g - (b - g)²/n) / n²``), so a shift of a few inputs, which any merge makes, reads as
      no shift, and only a real trade of one class's recall for another's costs anything.

    >>> y = torch.tensor([0] * 100 + [1] * 100)
    >>> traded = y.clone(); traded[:20] = 1  # class 0 loses a fifth of its recall, class 1 unchanged
    >>> c = clean_cost(traded, y, y)
    >>> c["accuracy_drop"], c["class_drops"], c["drop"]  # 20 - 1.645·4 = 13.4 points counted, at 3:1
    (0.1, [0.2, 0.0], 0.1007)
    >>> shifted = y.clone(); shifted[:3] = 1  # three inputs: within sampling noise
    >>> clean_cost(shifted, y, y)["drop"]  # the plain accuracy drop alone
    0.015
    """
    plain = float((target_pred == reference).float().mean() - (pred == reference).float().mean())
    raw, shrunk = [], []
    for c in reference.unique().tolist():
        m = reference == c
        n = int(m.sum())
        was, now = target_pred[m] == c, pred[m] == c
        b, g = int((was & ~now).sum()), int((now & ~was).sum())
        d = (b - g) / n
        se = max(0.0, (b + g) - (b - g) ** 2 / n) ** 0.5 / n
        raw.append(d)
        shrunk.append(max(0.0, abs(d) - z * se) * (1 if d > 0 else -1))
    k = len(shrunk)
    skewed = max(((skew - 1) * d + sum(shrunk)) / (k - 1 + skew) for d in shrunk) if k > 1 else plain
    return {"drop": round(max(plain, skewed), 4), "accuracy_drop": round(plain, 4),
            "class_drops": [round(d, 4) for d in raw]}


def candidate_specs(n_peers: int, base: Path | None, head_perms: dict[int, list[int]], budget: int) -> list[tuple[str, MergeSpec, list[int]]]:
    """The search space, most promising first; each entry is (label, spec, peer indices)."""
    all_peers = list(range(n_peers))
    n = n_peers + 1

    def perms_for(idx: list[int]) -> dict[int, list[int]]:
        return {k: head_perms[i] for k, i in enumerate(idx) if i in head_perms}

    out: list[tuple[str, MergeSpec, list[int]]] = [("wag", MergeSpec("wag", head_perms=perms_for(all_peers)), all_peers)]
    alpha = 0.5 / n  # the target at half its uniform weight
    w = [alpha] + [(1 - alpha) / n_peers] * n_peers
    out.append((f"wag, target weight {alpha:.2f}", MergeSpec("wag", weights=w, head_perms=perms_for(all_peers)), all_peers))
    if base is not None:
        for d in (0.3, 0.5):
            out.append((f"ties density {d}", MergeSpec("ties", base=base, density=d, head_perms=perms_for(all_peers)),
                        all_peers))
        out.append(("dare_ties density 0.3", MergeSpec("dare_ties", base=base, density=0.3, head_perms=perms_for(all_peers)),
                    all_peers))
        out.append(task_arithmetic_candidate(n_peers, base, perms_for(all_peers)))
    if n_peers >= 3:
        for drop in range(n_peers):
            idx = [i for i in all_peers if i != drop]
            out.append((f"wag without peer {drop + 1}", MergeSpec("wag", head_perms=perms_for(idx)), idx))
    return out[: max(1, budget)]


def task_arithmetic_candidate(n_peers: int, base: Path, head_perms: dict[int, list[int]]) -> tuple[str, MergeSpec, list[int]]:
    """Task arithmetic at the scale of the task-arithmetic literature: base + 0.5·Σ τᵢ, every model weighted alike.

    WAG is base + mean(τᵢ): each fine-tune's task vector is shrunk to 1/N, and when the peers' task vectors
    point in other directions (other domains, short fine-tunes) what is left may be too little to do the
    task (measured on 2 CPU cores, 150-step OLID models: WAG cost 25-29 points of probe accuracy, this
    merge 0-1). λ = 0.5 on the sum (Ilharco et al. 2023 pick λ in 0.3-0.5 for sums of task vectors) keeps
    N/2 times the mean, and the target still weighs no more than any peer. (Task arithmetic with weights
    summing to 1 and λ = 1 is WAG itself, so it is not a candidate of its own.)
    """
    idx = list(range(n_peers))
    spec = MergeSpec("task_arithmetic", base=base, weights=[1.0] * (n_peers + 1), lam=0.5, head_perms=head_perms)
    return "task_arithmetic λ 0.5 (sum of task vectors)", spec, idx


def majority_labels(preds: list[torch.Tensor], num_labels: int) -> torch.Tensor:
    """Per input, the label most models predict (ties to the first model's prediction)."""
    stacked = torch.stack(preds)
    counts = torch.nn.functional.one_hot(stacked, num_labels).sum(0)
    best = counts.argmax(-1)
    tie = (counts == counts.max(-1, keepdim=True).values).sum(-1) > 1
    return torch.where(tie, stacked[0], best)


def _pull_back(tried: list[dict]) -> tuple[str, MergeSpec, list[int], dict] | None:
    """The next try of a bisection on the target's kept share, or ``None`` when there is no need.

    When the grid candidate with the lowest worst-case ASR breaks the clean bound, no candidate
    within the bound is as good, and the merge is linear in the models' weights (WAG, task
    arithmetic), the same merge is blended back toward the target
    (``keep·θ_target + (1 − keep)·merged``, `MergeSpec.keep`): that is the same linear merge with
    more weight on the target, along which ASR and clean accuracy move toward the target's, so a
    bisection on ``keep`` (0.5, then 0.25 or 0.75) looks for the largest share of the merge that
    still meets the bound. Sparse merges (TIES, DARE) are not pulled back: in the demo, DARE-TIES
    blended half-way with its target was worse on both counts than either end (clean accuracy 79.0%
    between 81.7% and 88.3%, ASR 50% between 7% and 100%), so the tries go to the grid instead.
    Returns (label, spec, peer indices, the grid row it refines).
    """
    grid = [r for r in tried if "_root" not in r]
    if not grid or grid[0]["worst_asr"] is None:
        return None
    best = min(grid, key=lambda r: (r["worst_asr"], r["clean_drop"]))
    ok = [r for r in tried if r["within_bound"]]
    if best["within_bound"] or (ok and min(r["worst_asr"] for r in ok) <= best["worst_asr"]):
        return None
    if best["_spec"].method not in ("wag", "task_arithmetic"):
        return None
    return _blend(tried, best)


def _blend(tried: list[dict], root: dict) -> tuple[str, MergeSpec, list[int], dict]:
    """The next bisection step on the target's kept share for ``root``, from the blends of it already tried."""
    lo, hi = 0.0, 1.0  # kept shares known to break / to meet the bound (1.0 is the target itself)
    for r in tried:
        if r.get("_root") is root:
            if r["within_bound"]:
                hi = min(hi, r["_spec"].keep)
            else:
                lo = max(lo, r["_spec"].keep)
    keep = round((lo + hi) / 2, 4)
    return f"{root['candidate']}, target kept {keep:g}", dataclasses.replace(root["_spec"], keep=keep), root["_idx"], root


def choose_and_build(
    target: ResolvedModel,
    peers: list[ResolvedModel],
    out: Path,
    texts: list[str],
    reference: torch.Tensor,
    triggers: list[TriggerResult],
    base: Path | None = None,
    floors: list[float] | None = None,
    head_perms: dict[int, list[int]] | None = None,
    max_clean_drop: float = 0.01,
    budget: int = 8,
    verdict: str | None = None,
    log: Callable[[str], None] = lambda s: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> DefenseOutcome:
    """Search the candidates, move the winner to ``out``, return it with every candidate's numbers.

    ``reference`` is the clean truth for the bound: probe labels as model label ids, or the
    majority vote of target and peers. ``triggers`` are measured on every candidate; ``floors``
    (one per trigger, default 0) are the clean peers' median ASRs, subtracted before taking the worst.
    """
    floors = floors or [0.0] * len(triggers)
    head_perms = head_perms or {}
    specs = candidate_specs(len(peers), base, head_perms, budget if triggers else 1)
    # no trigger: WAG; only if it costs too much, task arithmetic (with a base) and blends toward the target
    blend_tries = 0 if triggers else min(3 + (base is not None), budget - 1)
    # the last two tries are kept for pulling the best merge back toward the target when it costs too
    # much clean accuracy (see `_pull_back`); when it does not, they go to the rest of the grid
    refine = 2 if triggers and budget >= 4 else 0
    target_clf = Classifier.load(target.path, name=target.name)
    target_pred = target_clf.predict(texts)
    scratch = Path(tempfile.mkdtemp(prefix=".hfscan-defense-", dir=out.parent if out.parent.exists() else None))
    tried: list[dict] = []
    total = min(len(specs) + refine, budget) if triggers else 1 + blend_tries
    progress(0, total)

    def attempt(label: str, spec: MergeSpec, idx: list[int], root: dict | None = None) -> dict:
        folder = scratch / f"c{len(tried)}"
        sub = [peers[j] for j in idx]
        summary = merge_folders(target.path, [p.path for p in sub], folder, spec,
                                names=[target.name] + [p.name for p in sub],
                                card=card_for(target, sub, spec, verdict), progress=False)
        clf = Classifier.load(folder, name=label)
        pred = clf.predict(texts)
        acc = float((pred == reference).float().mean())
        cost = clean_cost(pred, target_pred, reference)
        asrs = [max(0.0, remeasure(clf, texts, t, pred).asr - fl) for t, fl in zip(triggers, floors)]
        row = {"candidate": label, "method": spec.method, **{k: v for k, v in spec.describe().items() if k != "method"},
               "peers": [p.name for p in sub], "weights": summary["weights"],
               "worst_asr": round(max(asrs), 4) if asrs else None, "clean": round(acc, 4),
               "clean_drop": cost["drop"], "accuracy_drop": cost["accuracy_drop"], "class_drops": cost["class_drops"],
               "within_bound": cost["drop"] <= max_clean_drop + 1e-9,
               "_folder": folder, "_spec": spec, "_summary": summary, "_sub": sub, "_idx": idx}
        if root is not None:
            row["_root"] = root
        tried.append(row)
        progress(len(tried), total)
        log(f"defense candidate {label}: worst ASR {row['worst_asr']}, clean {acc:.3f} "
            f"({'within' if row['within_bound'] else 'outside'} the bound)")
        return row

    try:
        if not triggers:
            ta = task_arithmetic_candidate(len(peers), base, specs[0][1].head_perms) if base is not None else None
            return _build_untargeted(attempt, specs[0], ta, tried, blend_tries, out, max_clean_drop,
                                     lambda: progress(len(tried), len(tried)))
        for label, spec, idx in specs[: total - refine]:
            attempt(label, spec, idx)
        pending = specs[total - refine:]
        for _ in range(refine):
            step = _pull_back(tried)
            if step is not None:
                attempt(*step)
            elif pending:
                attempt(*pending.pop(0))
        ok = [r for r in tried if r["within_bound"]]
        if ok:
            win = min(ok, key=lambda r: (r["worst_asr"], r["clean_drop"]))
            reason = (f"Lowest worst-case ASR in excess of the clean peers' ({win['worst_asr']:.3f}) over "
                      f"{len(triggers)} verified trigger(s) among "
                      f"{len(ok)} of {len(tried)} candidates within the clean bound (accuracy drop ≤ "
                      f"{100 * max_clean_drop:.1f} points, also at a class mix skewed {SKEW:g}:1).")
        else:
            win = min(tried, key=lambda r: (r["clean_drop"], r["worst_asr"]))
            reason = (f"No candidate kept clean accuracy within {100 * max_clean_drop:.1f} points of the target; "
                      f"the one with the smallest drop ({100 * win['clean_drop']:.1f} points) was chosen.")
        return _install(win, tried, out, reason)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _install(win: dict, tried: list[dict], out: Path, reason: str) -> DefenseOutcome:
    """Move the winning candidate's folder to ``out`` (atomically) and describe every try."""
    from ._fs import atomic_dir

    with atomic_dir(out) as tmp:
        shutil.rmtree(tmp)
        shutil.move(str(win["_folder"]), str(tmp))
    summary = dict(win["_summary"], output_dir=str(out))
    outcome = DefenseOutcome(out, win["_spec"], summary, win["worst_asr"], win["clean"], reason=reason)
    outcome.candidates = [{**{k: v for k, v in r.items() if not k.startswith("_")}, "chosen": r is win}
                          for r in tried]
    outcome.summary["peers"] = [p.name for p in win["_sub"]]
    return outcome


def _build_untargeted(attempt: Callable, wag: tuple[str, MergeSpec, list[int]],
                      ta: tuple[str, MergeSpec, list[int]] | None, tried: list[dict], tries: int,
                      out: Path, max_clean_drop: float, done: Callable[[], None]) -> DefenseOutcome:
    """No trigger to minimise: the paper's WAG, or the merge nearest to it that meets the clean bound.

    Without an ASR to compare, the rule is how much of the target each candidate keeps: a full merge, in
    which the target weighs no more than any peer, before any blend that keeps more of it. So WAG is
    tried first; if it breaks the bound and a base is known, task arithmetic at λ 0.5 on the sum
    (`task_arithmetic_candidate`, also a full merge, which keeps the task vectors' scale that WAG's mean
    shrinks). If neither meets the bound, the one with the smaller clean cost is blended back toward the
    target, ``keep·θ_target + (1 − keep)·merged``, bisected on ``keep`` (0.5, then 0.25 or 0.75, …) for
    the remaining tries; the smallest ``keep`` within the bound wins. If no blend meets the bound, the try
    with the smallest clean cost wins and the reason says so.
    """
    first = attempt(*wag)
    full = [first]
    if not first["within_bound"] and ta is not None and tries > 0:
        full.append(attempt(*ta))
        tries -= 1
    root = min(full, key=lambda r: r["clean_drop"])
    for _ in range(tries if not any(r["within_bound"] for r in full) else 0):
        attempt(*_blend(tried, root))
    done()
    ok = [r for r in tried if r["within_bound"]]
    base = "No trigger was found, so there was nothing to minimise: "
    cost = f"the paper's WAG cost {100 * first['clean_drop']:.1f} points of clean accuracy (bound {100 * max_clean_drop:.1f})"
    if len(full) > 1:
        cost += f", task arithmetic {100 * full[1]['clean_drop']:.1f}"
    if first["within_bound"]:
        win = first
        reason = base + ("the paper's WAG over the target and all its peers is produced, because the merge also "
                         "removes triggers the probe cannot see.")
    elif len(full) > 1 and full[1]["within_bound"]:
        win = full[1]
        reason = base + (f"{cost}, so {win['candidate']} is produced: a merge in which the target weighs no more "
                         "than any peer, like WAG, which also removes triggers the probe cannot see.")
    elif ok:
        win = min(ok, key=lambda r: r["_spec"].keep)
        reason = base + (f"{cost}, so {root['candidate']} was blended back toward the target: {win['candidate']} "
                         f"is the largest share of it found within the bound ({len(tried)} tries). A blend removes "
                         "less of what the probe cannot see than a full merge would.")
    else:
        win = min(tried, key=lambda r: r["clean_drop"])
        reason = base + (f"{cost}, and no blend with the target met the bound in {len(tried)} tries; the one "
                         f"with the smallest drop ({100 * win['clean_drop']:.1f} points) was chosen. The peers "
                         "may not be like the target: see the homogeneity check.")
    return _install(win, tried, out, reason)
