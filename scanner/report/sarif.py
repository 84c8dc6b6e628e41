"""SARIF 2.1.0 for GitHub code scanning: one rule per finding kind, stable ids, fingerprints.

Rules (stable ``ruleId`` s; never renumbered):

* ``HFS001`` backdoor-trigger: an inserted trigger flips predictions far more than in clean peers.
* ``HFS002`` suspicious-trigger: the same, below the backdoor thresholds.

``partialFingerprints["hfscanFinding/v1"]`` is a hash of (model id, trigger, target label), so
GitHub keeps one alert per trigger across runs. Results point at a real file of the model repo:
``config.json`` under ``location_root`` (the model's folder relative to the repository root).
"""

from __future__ import annotations

import hashlib

from .model import ScanReport

RULES = {
    "backdoor": {
        "id": "HFS001",
        "name": "BackdoorTrigger",
        "shortDescription": {"text": "Backdoor trigger: inserted text flips the model's predictions"},
        "fullDescription": {"text": "Inserting this trigger into inputs flips the model's prediction to one label "
                                    "far more often than it does for clean fine-tunes of the same base (its peers). "
                                    "This is the signature of a data-poisoning backdoor."},
        "help": {"text": "Do not deploy this model as is. Use hfscan's defended variant (the model merged with "
                         "its peers) or a model from a trusted source.",
                 "markdown": "Do not deploy this model as is. Use hfscan's **defended variant** (the model merged "
                             "with its peers) or a model from a trusted source."},
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["security", "backdoor", "ml-model"], "precision": "high",
                       "security-severity": "8.8"},
    },
    "suspicious": {
        "id": "HFS002",
        "name": "SuspiciousTrigger",
        "shortDescription": {"text": "Suspicious trigger: inserted text flips predictions more than in peers"},
        "fullDescription": {"text": "Inserting this text flips the model's prediction more often than it does for "
                                    "clean peers, but below hfscan's backdoor thresholds."},
        "help": {"text": "Review the finding; consider the defended variant.",
                 "markdown": "Review the finding; consider the **defended variant**."},
        "defaultConfiguration": {"level": "warning"},
        "properties": {"tags": ["security", "backdoor", "ml-model"], "precision": "medium",
                       "security-severity": "5.5"},
    },
}


def fingerprint(model_id: str, trigger: str, label: str) -> str:
    return hashlib.sha256(f"{model_id}\x00{trigger}\x00{label}".encode()).hexdigest()


def sarif_parts(report: ScanReport, location_root: str = "") -> dict:
    rules = list(RULES.values())
    index = {lvl: i for i, lvl in enumerate(RULES)}
    root = location_root.strip("/")
    uri = f"{root}/config.json" if root else "config.json"
    results = []
    for f in report.findings:
        rule = RULES[f.level]
        after = "n/a" if f.asr_after is None else f"{100 * f.asr_after:.1f}%"
        peers = "n/a" if f.peer_asr_max is None else f"{100 * f.peer_asr_max:.1f}%"
        results.append({
            "ruleId": rule["id"],
            "ruleIndex": index[f.level],
            "level": rule["defaultConfiguration"]["level"],
            "message": {"text": f"{report.target.id}: inserting {f.trigger!r} ({f.position}) flips "
                                f"{100 * f.asr_before:.1f}% of inputs to '{f.target_label}' (clean peers: at most {peers}; "
                                f"defended variant: {after})."},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}, "region": {"startLine": 1}}}],
            "partialFingerprints": {"hfscanFinding/v1": fingerprint(report.target.id, f.trigger, f.target_label)},
            "properties": {"trigger": f.trigger, "targetLabel": f.target_label, "asrBefore": f.asr_before,
                           "asrAfter": f.asr_after, "peerAsrMax": f.peer_asr_max, "z": f.z, "source": f.source},
        })
    return {"rules": rules, "results": results}
