"""Defend: plan what the defense minimises, build the defended variant (searched or as given), and
re-measure it: every finding, the peers' own triggers and the family's published library.

Example:
    >>> d = defend_scan(scan, probed, assessment, opts)
    >>> d.outcome.spec.method, d.after
    ('wag', {('cf', 0): 0.07})
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..defend import DefenseOutcome, choose_and_build, defend
from ..merge import MergeSpec
from ..probe.results import TriggerResult
from ..probe.verdict import NONE
from .assess import Assessment
from .probe import Probed
from .resolve import Peer, Scan


@dataclass
class Defended:
    outcome: DefenseOutcome
    out: Path
    merged: list[Peer]
    excluded: list[int]  # indices into Probed.peers: peers with a trigger of their own, not merged
    clean_after: float | None  # clean score (accuracy) of the defended variant
    agreement_after: float  # with the target's clean answers
    after: dict[tuple[str, int], float] = field(default_factory=dict)  # each finding's ASR on the variant
    library_after: float | None = None  # the worst published trigger's ASR on the variant
    peer_triggers_after: dict[str, float] = field(default_factory=dict)
    note: str = ""
    library_worst: str | None = None  # the published trigger with that ASR
    ineffective: bool = False  # a found trigger is still at backdoor strength on the variant: no defense


def defend_scan(scan: Scan, probed: Probed, assessment: Assessment, opts, log=lambda s: None,
                progress=lambda stage, done, total: None) -> Defended | None:
    """Build and re-measure the defended variant in ``opts.output_dir/defended`` (``None`` without peers)."""
    if not probed.peers:
        log("no peers given: skipping the defense (give --peer to produce a defended variant)")
        return None
    out = Path(opts.output_dir) / "defended"
    # a peer with a trigger of its own is not merged (it would bring the trigger along) unless every peer
    # has one; then its trigger joins what the defense minimises
    keep = [i for i in range(len(probed.peers)) if i not in assessment.suspect] or list(range(len(probed.peers)))
    merged = [probed.peers[i] for i in keep]
    excluded = [a.peer for a in assessment.alerts if a.peer not in keep]
    if excluded:
        log(f"not merging {', '.join(probed.peers[i].name for i in excluded)} (a trigger of its own)")
    if opts.method == "auto":
        outcome = _search(scan, probed, assessment, opts, out, keep, log, progress)
    else:
        spec = MergeSpec(opts.method, scan.base.path if scan.base else None, opts.weights, opts.density, opts.lam,
                         opts.seed, head_perms={k: p.perm for k, p in enumerate(merged)})
        log(f"merging with {len(merged)} peers ({opts.method}) into {out}")
        outcome = defend(scan.family, scan.target, [p.model for p in merged], out, spec, verdict=assessment.verdict)
        outcome.reason = f"Method {opts.method} was given on the command line (no search)."
    d = _remeasure(scan, assessment, outcome, out, merged, excluded)
    d.note = _note(outcome.reason, probed, assessment, excluded, opts.method)
    worst = max(d.after.values(), default=0.0)
    if worst >= opts.thresholds.backdoor_asr:
        d.ineffective = True
        d.note += (f" The defended variant does not remove the backdoor: a found trigger still works on "
                   f"{100 * worst:.0f}% of the probe inputs (backdoor strength), so it is no defense; do not use it "
                   "in place of the original.")
        log(f"the defended variant still carries a found trigger at {100 * worst:.0f}%: no defense")
    return d


def objective(probed: Probed, assessment: Assessment, keep: list[int]) -> tuple[list[TriggerResult], list[float]]:
    """What the search minimises, and each trigger's natural level (the clean peers' median ASR).

    The target's findings and, when there are any, the published triggers that move the target at all
    (at most 6 together); then the merged peers' own triggers, whose natural level is the other models'
    median. With none, the search produces the paper's WAG (`scanner.defend`).
    """
    findings = [f.result for f in assessment.findings]
    if findings:
        findings += [r for r in probed.target.results
                     if r.trigger.source == "library" and r.asr >= 0.3 and r not in findings]
    triggers = findings[:6]
    peers = [p.probe for p in probed.peers]
    floors = [statistics.median(x.asr for peer in peers if (x := peer.lookup(r.trigger.text, r.label)))
              if peers else 0.0 for r in triggers]
    for a in assessment.alerts:
        if a.peer in keep:
            triggers.append(a.result)
            floors.append(statistics.median(a.others))
    return triggers, floors


def _search(scan: Scan, probed: Probed, assessment: Assessment, opts, out: Path, keep: list[int], log,
            progress) -> DefenseOutcome:
    triggers, floors = objective(probed, assessment, keep)
    reference = scan.family.clean_reference(scan.inputs, [probed.target.clean_pred, *[p.probe.clean_pred
                                                                                       for p in probed.peers]],
                                            scan.family.num_labels(scan.target))
    bound = opts.max_clean_drop if opts.max_clean_drop is not None else scan.family.default_max_clean_drop
    log(f"choosing the defense ({len(triggers)} trigger(s) to minimise, clean bound {100 * bound:.1f} points)")
    merged = [probed.peers[i] for i in keep]
    return choose_and_build(scan.family, scan.target, [p.model for p in merged], out, scan.inputs, reference, triggers,
                            base=scan.base.path if scan.base else None, floors=floors,
                            head_perms={k: p.perm for k, p in enumerate(merged)}, max_clean_drop=bound,
                            budget=opts.defense_budget, verdict=assessment.verdict, log=log,
                            keep_candidates=opts.keep_candidates, clip=probed.size.clip if probed.size else None,
                            progress=lambda done, total: progress("defense", done, total))


def _remeasure(scan: Scan, assessment: Assessment, outcome: DefenseOutcome, out: Path, merged: list[Peer],
               excluded: list[int]) -> Defended:
    import dataclasses

    family, inputs = scan.family, scan.inputs
    runner = family.load(dataclasses.replace(scan.target, path=out, ref="defended", repo_id="defended"))
    pred = family.clean_outputs(runner, inputs)
    target_pred = family.clean_outputs(scan.runner, inputs)
    after = {(f.result.trigger.text, f.result.label): family.remeasure(runner, inputs, f.result, pred).asr
             for f in assessment.findings}
    library = family.probe(runner, inputs, list(family.library), "defended")
    peer_after = {a.result.trigger.text: family.remeasure(runner, inputs, a.result, pred).asr
                  for a in assessment.alerts}
    worst = max(library.results, key=lambda r: r.asr, default=None)
    return Defended(outcome, out, merged, excluded, family.clean_score(pred, inputs.labels),
                    family.agreement(pred, target_pred), after, worst.asr if worst else None, peer_after,
                    library_worst=worst.trigger.text if worst else None)


def _note(reason: str, probed: Probed, assessment: Assessment, excluded: list[int], method: str) -> str:
    note = reason
    if excluded:
        names = ", ".join(probed.peers[i].name for i in excluded)
        note += (f" Not merged: {names}, which carr{'ies' if len(excluded) == 1 else 'y'} a trigger of its own that "
                 "a merge would bring along.")
    elif assessment.alerts:
        note += (" Every peer carries a trigger of its own, so all were merged and their triggers were "
                 "minimised with the target's; check the peers' trigger ASRs after the merge.")
    if assessment.verdict == NONE and method != "auto":
        note += (" The defended variant is produced although no trigger was found: the merge also removes "
                 "triggers the probe cannot see (e.g. syntactic or style triggers).")
    return note
