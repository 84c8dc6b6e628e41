"""`check`: the whole pipeline for one model, resolve → probe → assess (→ refill) → defend → report.

Example:
    >>> report = check(CheckOptions(target="models/suspect", peers=["models/p1", "models/p2", "models/p3"]))
    >>> report.verdict
    <Verdict.BACKDOOR: 'backdoor'>
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import sources
from .probe.verdict import Thresholds
from .report import ScanReport
from .report.build import build_report
from .sources import ModelSource
from .stages import assess_scan, defend_scan, probe_models, refill_peers, resolve_models


@dataclass
class CheckOptions:
    target: str
    peers: list[str] = field(default_factory=list)
    output_dir: Path = Path("hfscan-report")
    hub_dir: str | None = None
    probe_data: str | None = None
    method: str = "auto"  # "auto": search the defense; else one merge method
    base: str | None = None
    weights: list[float] | None = None
    density: float = 0.5
    lam: float = 1.0
    seed: int = 0
    defend: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)
    max_probe: int | None = None  # probe inputs used at most (None: the model family's default)
    search_budget: str = "default"  # gradient search: off | small | default | large
    max_clean_drop: float | None = None  # defense search: clean bound (None: the family's, 0.01 for classifiers)
    defense_budget: int = 8  # defense search: candidates tried at most
    discover: bool = True  # find peers on the hub when none are given
    max_peers: int = 3
    # benchmarks: copy every defense candidate's merged folder here (c0, c1, … in the order of defense.candidates)
    keep_candidates: Path | None = None


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def check(opts: CheckOptions, source: ModelSource | None = None, log: Callable[[str], None] = lambda s: None,
          progress: Progress = lambda stage, done, total: None) -> ScanReport:
    """Run the pipeline and return the report (rendering and exit codes are the caller's).

    ``source`` is where models are read (default: the target's folder or hub, `sources.for_target`);
    ``log`` gets one line per step; ``progress`` gets (stage, done, total) for the long stages:
    ``search`` (one step per model and label), ``verify`` (per model), ``defense`` (per candidate).
    """
    started = time.time()
    source = source or sources.for_target(opts.target, opts.hub_dir)
    scan = resolve_models(opts, source, log)
    probed = probe_models(scan, opts.search_budget, opts.thresholds.suspicious_asr, log, progress)
    assessment = assess_scan(probed, opts.thresholds, scan.target.labels, log, scan.family)
    scan, probed, assessment = refill_peers(scan, probed, assessment, opts, log, progress)
    defended = defend_scan(scan, probed, assessment, opts, log, progress) if opts.defend else None
    return build_report(scan, probed, assessment, defended, started)
