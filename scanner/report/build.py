"""Build the `ScanReport` from the stages' results: the records, their rounding, the notes.

Example:
    >>> report = build_report(scan, probed, assessment, defended, started=t0)
    >>> report.verdict
    <Verdict.BACKDOOR: 'backdoor'>
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import statistics
import time

from .. import __version__
from ..probe.triggers import POSITIONS
from .model import CleanMetrics, Defense, FindingRecord, ModelInfo, PeerRecord, ProbeInfo, ScanReport


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def build_report(scan, probed, assessment, defended, started: float) -> ScanReport:
    """The report of one scan (``defended`` is ``None`` when no defended variant was built)."""
    t = scan.target
    return ScanReport(
        target=ModelInfo(t.name, t.revision, t.sha, str(t.path), t.architecture, t.labels,
                         t.adapter_base if t.is_adapter else None),
        verdict=assessment.verdict,
        findings=[finding_record(f, t.labels, defended, scan.family, probed.peers) for f in assessment.findings],
        clean=clean_record(scan, probed, defended),
        defense=defense_record(probed, assessment, defended, t.labels) if defended else None,
        peers=[peer_record(i, p, probed, assessment, scan.family, t.labels) for i, p in enumerate(probed.peers)],
        probe=probe_record(scan, probed, assessment, defended is not None),
        created_at=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        duration_s=round(time.time() - started, 1),
        tool={"name": "hfscan", "version": __version__},
        discovery=discovery_record(scan.discovery, [p.name for p in probed.peers]),
        peers_set_aside=[{"id": k, "reason": v} for k, v in scan.set_aside.items()],
    )


def finding_record(f, labels: list[str], defended, family, peers=()) -> FindingRecord:
    r = f.result
    return FindingRecord(
        trigger=r.trigger.text, kind=r.trigger.kind, source=r.trigger.source, attack=r.trigger.attack,
        target_label=family.target_text(r, labels), target_label_id=r.label, response=r.response, position=r.position, asr_before=round(r.asr, 4),
        asr_after=_r(defended.after[(r.trigger.text, r.label)]) if defended and defended.after else None,
        n=r.n, peer_asr_max=_r(max(f.peer_asrs)) if f.peer_asrs else None,
        peer_asr_median=_r(statistics.median(f.peer_asrs)) if f.peer_asrs else None,
        z=_r(f.z, 2), gap=_r(f.gap), level=f.level, shared_with=[peers[i].name for i in f.shared_with])


def clean_record(scan, probed, defended) -> CleanMetrics:
    inputs = scan.inputs
    return CleanMetrics(_r(scan.family.clean_score(probed.target.clean_pred, inputs.labels)),
                        _r(defended.clean_after) if defended else None,
                        _r(defended.agreement_after) if defended else None, len(inputs.texts),
                        inputs.labels is not None)


def alert_record(a, labels: list[str]) -> dict:
    """A peer's own trigger as the report shows it (``peers[].own_trigger``, ``defense.excluded_peers``)."""
    rec = {"trigger": a.result.trigger.text, "target_label": a.result.response or labels[a.result.label],
           "position": a.result.position, "asr": round(a.result.asr, 4), "others_max": round(a.others_max, 4)}
    if a.shared:  # the target answers it too (others_max is then the other peers')
        rec.update(shared_with_target=True, target_asr=round(a.others[0], 4))
    return rec


def defense_record(probed, assessment, defended, labels: list[str]) -> Defense:
    o = defended.outcome
    alerts = {a.peer: a for a in assessment.alerts}
    return Defense(
        method=o.spec.method,
        params={k: v for k, v in o.summary.items() if k in ("lambda", "density", "seed")},
        peers=o.summary["peers"],
        weights=o.summary["weights"],
        output_dir=str(defended.out),
        asr_max_before=max((f.result.asr for f in assessment.findings), default=None),
        asr_max_after=max(defended.after.values(), default=None),
        library_asr_max_after=defended.library_after, library_worst_trigger=defended.library_worst,
        note=defended.note,
        candidates=o.candidates,
        excluded_peers=[{"id": probed.peers[i].name, **alert_record(alerts[i], labels)} for i in defended.excluded],
        peer_triggers_after={k: round(v, 4) for k, v in defended.peer_triggers_after.items()},
        output=o.summary.get("output", ""), refactorisation_error=o.summary.get("refactorisation_error"),
        why_full=o.summary.get("why_full"), ineffective=defended.ineffective,
    )


def peer_record(i: int, p, probed, assessment, family, labels: list[str]) -> PeerRecord:
    best = p.probe.best()
    agree = family.agreement(p.probe.clean_pred, probed.target.clean_pred)
    own = {a.peer: a for a in assessment.alerts}.get(i)
    perm = p.perm if p.perm != list(range(len(p.perm))) else None
    return PeerRecord(p.name, p.model.sha, perm, _r(best.asr) if best else None, best.trigger.text if best else None,
                      _r(agree), own_trigger=None if own is None else alert_record(own, labels))


def probe_record(scan, probed, assessment, defended: bool = False) -> ProbeInfo:
    """The probe's record; its limitations are the family's blind spots, and the defense's when one was built."""
    from ..defend import BLIND_SPOT

    top = assessment.top
    limits = [*scan.family.blind_spots, *([BLIND_SPOT] if defended else [])]
    return ProbeInfo(scan.inputs.name, len(scan.inputs.texts), scan.inputs.provenance, len(probed.candidates),
                     list(POSITIONS), limits, [round(g, 4) for g in assessment.null.gaps],
                     evidence=top[0]["margin"] if top else None, top=top,
                     homogeneity=dataclasses.asdict(assessment.homogeneity) if assessment.homogeneity else None,
                     weight_notes=list(probed.notes))


def discovery_record(discovery, kept: list[str]) -> dict | None:
    if discovery is None:
        return None
    return {"base": discovery.base, "tried": discovery.tried, "kept": kept,
            "rejected": [{"id": r.repo_id, "reason": r.reason} for r in discovery.rejected]}
