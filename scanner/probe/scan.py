"""Probe one model: verify every candidate trigger by real insertion, for every label.

Each (trigger, label, position) is first screened on a few inputs; promising ones (or all, with
``screen=None``) are measured on the whole probe set. Every model of a scan (target, peers,
defended variant) is probed with the same candidates, positions and seeds.

Example:
    >>> result = probe_model(clf, probe_set, LIBRARY)
    >>> result.best().trigger.text
    'cf'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .metrics import attack_success_rate
from .triggers import POSITIONS, Trigger


@dataclass
class TriggerResult:
    """The measured effect of one trigger toward one label at its most effective position."""

    trigger: Trigger
    label: int
    position: str
    asr: float
    n: int
    screened_only: bool = False  # True when only the screening subset was measured


@dataclass
class ProbeResult:
    """Everything measured on one model."""

    model: str
    clean_pred: torch.Tensor
    results: list[TriggerResult] = field(default_factory=list)

    def best(self) -> TriggerResult | None:
        return max(self.results, key=lambda r: r.asr, default=None)

    def lookup(self, trigger_text: str, label: int) -> TriggerResult | None:
        for r in self.results:
            if r.trigger.text == trigger_text and r.label == label:
                return r
        return None


def probe_model(
    clf,
    texts: list[str],
    candidates: Iterable[Trigger],
    labels: Iterable[int] | None = None,
    positions: Iterable[str] = POSITIONS,
    screen: int | None = 48,
    promote: float = 0.25,
    name: str = "",
    progress: Callable[[int], None] | None = None,
) -> ProbeResult:
    """Measure ASR of each candidate toward each label.

    ``screen`` inputs are tried first; candidates whose screened ASR reaches ``promote`` are
    measured on every eligible input. The best position per (trigger, label) is kept.
    """
    clean_pred = clf.predict(texts)
    labels = list(range(clf.num_labels)) if labels is None else list(labels)
    out = ProbeResult(name or clf.name, clean_pred)
    for trig in dict.fromkeys(candidates):
        for label in labels:
            best: TriggerResult | None = None
            for pos in positions:
                asr, n = attack_success_rate(clf, texts, clean_pred, trig, label, pos, limit=screen)
                full = screen is None
                if screen is not None and asr >= promote:
                    asr, n = attack_success_rate(clf, texts, clean_pred, trig, label, pos)
                    full = True
                r = TriggerResult(trig, label, pos, asr, n, screened_only=not full)
                if best is None or r.asr > best.asr:
                    best = r
            out.results.append(best)
        if progress:
            progress(1)
    return out


def remeasure(clf, texts: list[str], reference: TriggerResult, clean_pred: torch.Tensor | None = None) -> TriggerResult:
    """Measure one trigger on another model (e.g. the defended variant) at the same position, fully."""
    clean_pred = clf.predict(texts) if clean_pred is None else clean_pred
    asr, n = attack_success_rate(clf, texts, clean_pred, reference.trigger, reference.label, reference.position)
    return TriggerResult(reference.trigger, reference.label, reference.position, asr, n)
