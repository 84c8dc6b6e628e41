"""Refill: when vetting sets discovered peers aside (a trigger of their own), take the next compatible
candidates from discovery's reserve until ``max_peers`` clean-looking peers are found or none are left, then
probe and assess again with them.

Without this, a scan whose top-ranked candidates include a backdoored or otherwise triggered model merges
fewer peers than it could, while clean compatible candidates are left unused. Explicit ``--peer`` lists are
never extended: the user chose them.

Example:
    >>> scan, probed, assessment = refill_peers(scan, probed, assessment, opts)
    >>> len(scan.peers) - len(assessment.suspect)
    3
"""

from __future__ import annotations

from .assess import Assessment, assess_scan
from .probe import Probed, probe_models
from .resolve import Peer, Scan, ready_peers

MAX_ROUNDS = 3  # each round re-probes every model; a hub whose candidates are all triggered is not worth more


def refill_peers(scan: Scan, probed: Probed, assessment: Assessment, opts, log=lambda s: None,
                 progress=lambda stage, done, total: None) -> tuple[Scan, Probed, Assessment]:
    """The scan, probe results and assessment after refilling the peers that vetting set aside."""
    for _ in range(MAX_ROUNDS):
        if scan.discovery is None or not assessment.suspect:
            break
        usable = len(scan.peers) - len(assessment.suspect)
        found = scan.discovery.more(opts.max_peers - usable)
        if not found:
            break
        log(f"vetting set {len(assessment.suspect)} peer(s) aside; taking the next {len(found)} candidate(s)")
        new, aside = ready_peers(scan.family, scan.target, [Peer(p.model, p.permutation) for p in found], log,
                                 known=scan.peers)
        scan.set_aside.update(aside)
        if not new:
            continue
        scan.peers = [*scan.peers, *new]
        probed = probe_models(scan, opts.search_budget, opts.thresholds.suspicious_asr, log, progress)
        assessment = assess_scan(probed, opts.thresholds, scan.target.labels, log, scan.family)
    return scan, probed, assessment
