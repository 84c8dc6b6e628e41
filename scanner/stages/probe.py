"""Probe: gather candidate triggers from every model, verify each on the target and on every peer,
and align the peers with the target (the same position, the target's label ids).

Example:
    >>> probed = probe_models(scan, search_budget="default")
    >>> probed.target.best().trigger.text
    'cf'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..probe.results import ProbeResult
from ..probe.triggers import Trigger
from .norms import TaskVectorSize, measure_size
from .resolve import Peer, Scan


@dataclass
class Probed:
    candidates: list[Trigger]
    target: ProbeResult
    peers: list[Peer]  # the scan's peers, each with its ProbeResult in the target's label ids
    notes: list[str] = dataclasses.field(default_factory=list)  # what the target's weights show besides triggers
    size: TaskVectorSize | None = None  # the target's task-vector norm against its peers' (`stages.norms`)


def probe_models(scan: Scan, search_budget: str, threshold: float, log=lambda s: None,
                 progress=lambda stage, done, total: None) -> Probed:
    """Candidates from every model, verified everywhere; peers compared at the target's best positions.

    ``threshold`` is the ASR above which a result is strong enough to re-measure the others at its position.
    """
    family, inputs = scan.family, scan.inputs
    log("gathering candidate triggers (library, weight-space differential, gradient search)")
    notes: list[str] = []

    def note(line: str) -> None:
        log(line)
        notes.append(line)

    candidates = family.candidates([scan.target, *[p.model for p in scan.peers]],
                                   [scan.runner, *[p.runner for p in scan.peers]], inputs,
                                   scan.base.path if scan.base else None, search_budget, log,
                                   lambda done, total: progress("search", done, total), note=note)
    size = measure_size(scan.target, [p.model for p in scan.peers], scan.base)
    if size and size.note():
        note(size.note())
    log(f"verifying {len(candidates)} candidates on {scan.target.name} and {len(scan.peers)} peers "
        f"({len(inputs.texts)} inputs)")
    total = 1 + len(scan.peers)
    progress("verify", 0, total)
    target = family.probe(scan.runner, inputs, candidates, scan.target.name)
    progress("verify", 1, total)
    peers = []
    for i, p in enumerate(scan.peers):
        res = family.probe(p.runner, inputs, candidates, p.name).relabelled(p.to_target)
        peers.append(dataclasses.replace(p, probe=res))
        progress("verify", i + 2, total)
    _align(family, inputs, target, peers, threshold)
    return Probed(candidates, target, peers, notes, size)


def _align(family, inputs, target: ProbeResult, peers: list[Peer], threshold: float) -> None:
    """Peers are compared at the target's most effective position; for the null, each peer's strong
    results are compared with the other peers at that peer's position, the same way."""
    family.align(target, [p.probe for p in peers], [p.runner for p in peers], [p.perm for p in peers], inputs,
                 threshold)
    for i, p in enumerate(peers):
        others = [q for j, q in enumerate(peers) if j != i]
        # every probe is in the target's ids, so each other peer's map from them is its own perm
        family.align(p.probe, [q.probe for q in others], [q.runner for q in others], [q.perm for q in others],
                     inputs, threshold)
