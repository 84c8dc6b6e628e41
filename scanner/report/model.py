"""`ScanReport`: the one object every renderer sees. Versioned JSON (``schema_version``).

Schema 1 (``report.json``)::

    schema_version  "1"
    tool            {name, version}
    created_at      ISO-8601 UTC
    target          {id, revision, sha, path, architecture, labels, adapter_base}
    verdict         "backdoor" | "suspicious" | "no_trigger_found"
    findings        [{trigger, kind, source, attack, target_label, target_label_id, position,
                      asr_before, asr_after, n, peer_asr_max, peer_asr_median, z, level, gap,
                      response (generative models: the recovered target response, else null),
                      shared_with (peers that answer the trigger as the target does, read apart)}]
    clean           {accuracy_before, accuracy_after, agreement_after, n, labelled}
    defense         {method, params, peers, weights, output_dir, asr_max_before, asr_max_after,
                     library_asr_max_after, note, excluded_peers, peer_triggers_after, library_worst_trigger,
                     candidates: [{candidate, method, peers, weights, worst_asr, worst_n, clean, clean_drop,
                     accuracy_drop, class_drops, within_bound, chosen, ...}], output,
                     refactorisation_error, why_full, ineffective}
    peers           [{id, sha, label_permutation, best_asr, best_trigger, agreement, own_trigger
                      ({trigger, target_label, position, asr, others_max, shared_with_target?, target_asr?})}]
    discovery       {base, tried, kept, rejected: [{id, reason}]} or null (peers given explicitly)
    peers_set_aside [{id, reason}]: peers that are the target or (near-)copies of it, not used
    publish         {pr: {action, url, num, files}, variant: {action, url, files}} or null
    probe           {set, n, provenance, candidates, positions, limitations, null_gaps, evidence,
                     top: [{trigger, source, target_label_id, position, asr, peer_asr_max, margin}],
                     homogeneity: {target, peers, shortfall, homogeneous} or null,
                     weight_notes: [what the target's weights show besides triggers, e.g. decoy rows]}
    duration_s      seconds
    exit_code       0 no trigger found, 1 backdoor or suspicious

Fields are ``null`` where unknown (e.g. accuracy when the probe set's labels do not match the
model's). Adding a field is a minor change; renaming or removing one bumps ``schema_version``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

SCHEMA_VERSION = "1"


@dataclass
class ModelInfo:
    id: str
    revision: str | None = None
    sha: str | None = None
    path: str | None = None
    architecture: str | None = None
    labels: list[str] = field(default_factory=list)
    adapter_base: str | None = None  # a LoRA adapter's base model (None: a full model)


@dataclass
class FindingRecord:
    trigger: str
    kind: str
    source: str
    attack: str | None
    target_label: str
    target_label_id: int
    position: str
    asr_before: float
    asr_after: float | None
    n: int
    peer_asr_max: float | None
    peer_asr_median: float | None
    z: float | None
    level: str
    gap: float | None = None
    response: str | None = None  # generative models: the response the trigger makes the model give
    # peers that answer this trigger as the target does (an accomplice): read apart, the finding capped at suspicious
    shared_with: list[str] = field(default_factory=list)


@dataclass
class CleanMetrics:
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    agreement_after: float | None = None
    n: int = 0
    labelled: bool = False


@dataclass
class PeerRecord:
    id: str
    sha: str | None = None
    label_permutation: list[int] | None = None
    best_asr: float | None = None
    best_trigger: str | None = None
    agreement: float | None = None  # share of clean probe inputs on which it predicts what the target does
    # a backdoor-strength trigger this peer answers and no other model does: {trigger, target_label,
    # position, asr, others_max}, or one it shares with the target (shared_with_target: true, target_asr,
    # others_max over the other peers); such a peer is not merged (see Defense.excluded_peers)
    own_trigger: dict | None = None


@dataclass
class Defense:
    method: str
    params: dict = field(default_factory=dict)
    peers: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    output_dir: str | None = None
    asr_max_before: float | None = None
    asr_max_after: float | None = None
    library_asr_max_after: float | None = None
    note: str = ""
    candidates: list[dict] = field(default_factory=list)  # every merge tried by the defense search
    excluded_peers: list[dict] = field(default_factory=list)  # peers not merged: [{id, **own_trigger}]
    peer_triggers_after: dict = field(default_factory=dict)  # peers' own triggers: ASR on the defended model
    library_worst_trigger: str | None = None  # the published trigger with the worst ASR after defense
    output: str = ""  # what was written: "LoRA adapter, rank R" or "merged full weights" ("" for full models)
    refactorisation_error: dict | None = None  # an adapter's ‖ΔW − B·A‖/‖ΔW‖: {max, mean}
    why_full: str | None = None  # why an adapter's defended variant is full weights
    ineffective: bool = False  # a found trigger is still at backdoor strength on the defended variant


@dataclass
class ProbeInfo:
    set: str
    n: int
    provenance: str
    candidates: int
    positions: list[str]
    limitations: list[str] = field(default_factory=list)
    null_gaps: list[float] = field(default_factory=list)  # each peer's own best specificity gap
    # the strongest margin over every peer (target ASR minus the largest peer ASR) of any verified
    # candidate, whether or not it made a finding: a continuous score (e.g. for ROC curves)
    evidence: float | None = None
    top: list[dict] = field(default_factory=list)  # the 5 candidates with the largest margins
    # clean agreement: {target: [with each peer], peers: [each pair], shortfall, homogeneous}; findings
    # are capped at suspicious when the target is not like its peers, and a positive shortfall is taken off
    # every finding's margins over the peers (see probe.verdict.homogeneity and assess)
    homogeneity: dict | None = None
    weight_notes: list[str] = field(default_factory=list)  # the target's weights, besides triggers (decoy rows)


@dataclass
class ScanReport:
    target: ModelInfo
    verdict: str
    findings: list[FindingRecord]
    clean: CleanMetrics
    defense: Defense | None
    peers: list[PeerRecord]
    probe: ProbeInfo
    created_at: str
    duration_s: float
    tool: dict = field(default_factory=dict)
    discovery: dict | None = None  # {base, tried, kept: [ids], rejected: [{id, reason}]} when peers were discovered
    publish: dict | None = None  # {pr: {action, url, num, files}, variant: {...}} when asked to publish
    peers_set_aside: list[dict] = field(default_factory=list)  # [{id, reason}]: the target itself, copies of it
    schema_version: str = SCHEMA_VERSION

    @property
    def outcome(self) -> str:
        """What a finding's trigger leads to, as a column heading: a class label, or a generated response."""
        return "Target response" if any(f.response is not None for f in self.findings) else "Target label"

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == "no_trigger_found" else 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
