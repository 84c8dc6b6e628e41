"""The stages of `scanner.pipeline.check`, each a function with typed inputs and outputs:

    resolve_models  -> Scan        the target, its peers (given or discovered), the base, the probe inputs
    probe_models    -> Probed      candidate triggers, verified on the target and on every peer
    assess_scan     -> Assessment  vetting of peers, homogeneity, the verdict against the peers' null
    refill_peers    -> (Scan, Probed, Assessment)  discovered peers that vetting set aside, replaced
    defend_scan     -> Defended    the defended variant, chosen, built and re-measured

`scanner.report.build.build_report` turns their results into the `ScanReport`.
"""

from .assess import Assessment, assess_scan
from .defend import Defended, defend_scan
from .probe import Probed, probe_models
from .refill import refill_peers
from .resolve import Peer, Scan, resolve_models

__all__ = ["Assessment", "Defended", "Peer", "Probed", "Scan", "assess_scan", "defend_scan", "probe_models",
           "refill_peers", "resolve_models"]
