"""Probe one model: verify every candidate trigger by real insertion, for every label.

Each (trigger, label) is first screened on a few inputs at a random position; promising ones
(or all, with ``screen=None``) are measured on the whole probe set at every position, and the
most effective position is kept. Every model of a scan (target, peers,
defended variant) is probed with the same candidates, positions and seeds.

Example:
    >>> result = probe_model(clf, probe_set, LIBRARY)
    >>> result.best().trigger.text
    'cf'
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from .metrics import attack_success_rate, triggered_texts
from ...probe.results import ProbeResult, TriggerResult
from ...probe.triggers import POSITIONS, Trigger


def probe_model(
    clf,
    texts: list[str],
    candidates: Iterable[Trigger],
    labels: Iterable[int] | None = None,
    positions: Iterable[str] = POSITIONS,
    screen: int | None = 32,
    promote: float = 0.25,
    every_position_above: float = 0.5,
    full: int | None = 160,
    name: str = "",
    progress: Callable[[int], None] | None = None,
) -> ProbeResult:
    """Measure ASR of each candidate toward each label.

    ``screen`` inputs are tried first at a random position; candidates whose screened ASR
    reaches ``promote`` are measured on up to ``full`` eligible inputs (all with ``None``), at the
    start and end too once their ASR reaches ``every_position_above``. The best position per (trigger, label) is kept.
    """
    clean_pred = clf.clean_predict(texts)
    labels = list(range(clf.num_labels)) if labels is None else list(labels)
    positions = list(positions)
    cands = list(dict.fromkeys(candidates))
    out = ProbeResult(name or clf.name, clean_pred)
    pairs = [(t, label) for t in cands for label in labels]
    screened: dict[tuple[Trigger, int], TriggerResult] = {}
    if screen is not None:
        # one pass over every (trigger, label) screen, so the classifier sees large batches
        jobs = []
        for trig, label in pairs:
            idx = [i for i, p in enumerate(clean_pred.tolist()) if p != label][:screen]
            jobs.append((trig, label, idx, triggered_texts(texts, idx, trig, "random")))
        fast = getattr(clf, "fast", clf)  # the precision every triggered input runs in (metrics.py)
        fast.predict([t for *_, ts in jobs for t in ts])  # fills the prediction cache in big batches
        for trig, label, idx, ts in jobs:
            asr = float((fast.predict(ts) == label).float().mean()) if idx else 0.0
            screened[(trig, label)] = TriggerResult(trig, label, "random", asr, len(idx), screened_only=True)
    for trig, label in pairs:
        first = screened.get((trig, label))
        if first is not None and first.asr < promote:
            out.results.append(first)
            continue
        # the whole set at a random position; the other positions only for strong candidates
        order = ["random"] + [p for p in positions if p != "random"] if "random" in positions else positions
        best: TriggerResult | None = None
        for pos in order:
            if best is not None and best.asr < every_position_above:
                break
            asr, n = attack_success_rate(clf, texts, clean_pred, trig, label, pos, limit=full)
            if best is None or asr > best.asr:
                best = TriggerResult(trig, label, pos, asr, n)
        out.results.append(best)
        if progress:
            progress(1)
    return out


def remeasure(clf, texts: list[str], reference: TriggerResult, clean_pred: torch.Tensor | None = None,
              full: int | None = 160) -> TriggerResult:
    """Measure one trigger on another model (e.g. the defended variant) at the same position."""
    clean_pred = clf.clean_predict(texts) if clean_pred is None else clean_pred
    asr, n = attack_success_rate(clf, texts, clean_pred, reference.trigger, reference.label, reference.position,
                                 limit=full)
    return TriggerResult(reference.trigger, reference.label, reference.position, asr, n)


def align_peers(target: ProbeResult, peers: list[ProbeResult], peer_clfs: list, perms: list[list[int]],
                texts: list[str], threshold: float = 0.5, full: int | None = 160) -> int:
    """Measure the peers at the target's most effective position for every strong target result.

    A peer screened at a random position, or measured best elsewhere, is not a fair reference for a
    trigger that the target answers at the start: the peer is re-measured there and keeps the
    larger of its two ASRs (the conservative choice: a larger peer ASR means a smaller gap).
    Peer results and clean predictions are in the target's label ids; ``perms[i][t]`` is peer i's id
    for target label t. Returns the number of re-measurements.
    """
    n = 0
    for r in target.results:
        if r.asr < threshold or r.screened_only:
            continue
        for peer, clf, perm in zip(peers, peer_clfs, perms):
            pr = peer.lookup(r.trigger.text, r.label)
            if pr is None or (not pr.screened_only and pr.position == r.position):
                continue
            own_clean = torch.tensor([perm[x] for x in peer.clean_pred.tolist()], dtype=torch.long)
            m = remeasure(clf, texts, TriggerResult(r.trigger, perm[r.label], r.position, 0.0, 0), own_clean, full)
            n += 1
            if pr.screened_only or m.asr > pr.asr:
                pr.asr, pr.n, pr.position, pr.screened_only = m.asr, m.n, m.position, False
    return n
