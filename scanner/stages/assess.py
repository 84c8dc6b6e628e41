"""Assess: vet the peers (a peer with a backdoor-strength trigger of its own), check that the target is
like its peers (homogeneity), and read the verdict against the peers' null (`scanner.probe.verdict`).

Example:
    >>> a = assess_scan(probed, Thresholds())
    >>> a.verdict, [f.result.trigger.text for f in a.findings][:1]
    (<Verdict.BACKDOOR: 'backdoor'>, ['cf'])
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..probe.results import ProbeResult
from ..probe.verdict import Finding, Homogeneity, Null, PeerAlert, Thresholds, Verdict, assess, homogeneity, suspect_peers
from .probe import Probed


@dataclass
class Assessment:
    verdict: Verdict
    findings: list[Finding]
    null: Null
    alerts: list[PeerAlert]  # peers with a trigger of their own (``peer`` indexes Probed.peers)
    homogeneity: Homogeneity | None  # None without peers
    top: list[dict]  # the target's candidates with the largest margins over every peer

    @property
    def suspect(self) -> set[int]:
        return {a.peer for a in self.alerts}


def assess_scan(probed: Probed, thresholds: Thresholds, labels: list[str], log=lambda s: None,
                family=None) -> Assessment:
    """Vet, compare and decide; ``labels`` are the target's label names (for log lines)."""
    peer_probes = [p.probe for p in probed.peers]
    alerts = suspect_peers(probed.target, peer_probes, thresholds)
    for a in alerts:
        what = "shares the target's trigger" if a.shared else "has a trigger of its own"
        log(f"peer {probed.peers[a.peer].name} {what}: {a.result.trigger.text!r} -> "
            f"{a.result.response or labels[a.result.label]} at {100 * a.result.asr:.0f}% (other "
            f"{'peers' if a.shared else 'models'} <= {100 * a.others_max:.0f}%)")
    suspect = {a.peer for a in alerts}
    keep = _not_leaked(probed.target, family, thresholds.suspicious_asr)
    homog = homogeneity(probed.target.clean_pred[keep],
                        [p.clean_pred[keep] for i, p in enumerate(peer_probes) if i not in suspect], thresholds)
    if family is not None and homog.shortfall is not None:
        homog.shortfall = family.effective_shortfall(homog)
        homog.homogeneous = homog.shortfall <= thresholds.heterogeneity_margin
    _log_homogeneity(homog, log)
    verdict, findings, null = assess(probed.target, peer_probes, thresholds, alerts=alerts,
                                     homogeneous=homog.homogeneous, shortfall=homog.shortfall)
    log(f"verdict: {verdict}")
    return Assessment(verdict, findings, null, alerts, homog if peer_probes else None,
                      top_candidates(probed.target, peer_probes))


def _not_leaked(target: ProbeResult, family, threshold: float):
    """The clean inputs homogeneity is read on: all, except where the target already gives a response that one
    of its strong triggers collapses answers onto (a backdoor leaking into clean answers is the finding's
    evidence, not a sign that the target is unlike its peers). Classifiers have no such responses."""
    import torch

    strong = [r for r in target.results if r.asr >= threshold] if family else []
    keep = torch.ones(len(target.clean_pred), dtype=torch.bool)
    for r in strong:
        keep &= ~family.leaked(r, target.clean_pred)
    return keep if int(keep.sum()) >= max(8, len(keep) // 2) else torch.ones_like(keep)


def _log_homogeneity(homog: Homogeneity, log) -> None:
    if not homog.homogeneous:
        log(f"the target agrees with its peers on {100 * statistics.median(homog.target):.0f}% of clean inputs, the "
            f"peers with each other on {100 * statistics.median(homog.peers):.0f}%: findings are capped at suspicious")
    elif homog.shortfall and homog.shortfall > 0:
        log(f"the target agrees with its peers {100 * homog.shortfall:.1f} points less than they do with each other: "
            "its margins over them are discounted by as much")


def top_candidates(target: ProbeResult, peers: list[ProbeResult], k: int = 5) -> list[dict]:
    """The target's k verified candidates that stand highest above every peer (findings or not)."""
    rows = []
    for r in target.results:
        peer_asrs = [x.asr for p in peers if (x := p.lookup(r.trigger.text, r.label)) is not None]
        peer_max = max(peer_asrs) if peer_asrs else 0.0
        rows.append({"trigger": r.trigger.text, "source": r.trigger.source, "target_label_id": r.label,
                     "position": r.position, "asr": round(r.asr, 4), "peer_asr_max": round(peer_max, 4),
                     "margin": round(r.asr - peer_max, 4)})
    rows.sort(key=lambda d: (-d["margin"], -d["asr"], len(d["trigger"])))
    return rows[:k]
