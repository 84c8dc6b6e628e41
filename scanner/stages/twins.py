"""Peers an attacker controls: the target itself, byte-identical copies of it, and near-copies.

The verdict trusts the peers as the null, so a copy of the backdoored model uploaded under another name would
make its trigger look normal. Before probing, the distance of every peer's weights to the target's is compared
with the peers' distances to each other (streamed tensor by tensor, float32): a peer at distance 0 from the
target is a copy; with two or more other peers, a peer whose distance to the target is under `NEAR` (half) of the
smallest distance between two other peers is a near-copy (independent fine-tunes of one base are about equally
far from each other). Both are set aside, named with their reason.

Example:
    >>> set_aside = near_copies(target, [p.model for p in peers])
    >>> set_aside
    {'evil/twin': 'a copy of the target (identical weights)'}
"""

from __future__ import annotations

import itertools

import torch

from ..sources.model import ResolvedModel

NEAR = 0.5


def _same_model(a: ResolvedModel, b: ResolvedModel) -> bool:
    if a.path.resolve() == b.path.resolve():
        return True
    return bool(a.repo_id and a.repo_id == b.repo_id and a.sha and a.sha == b.sha)


def distances(models: list[ResolvedModel]) -> dict[tuple[int, int], float]:
    """Euclidean distances between the models' float tensors that all of them share (same name and shape)."""
    sets = [m.weights() for m in models]
    try:
        names = [n for n, i in sets[0].header.items() if i.is_float and
                 all(n in s.header and s.header[n].shape == i.shape for s in sets[1:])]
        sq = {pair: 0.0 for pair in itertools.combinations(range(len(models)), 2)}
        for n in names:
            ts = [s.get(n).float() for s in sets]
            for i, j in sq:
                sq[(i, j)] += float(torch.sum((ts[i] - ts[j]) ** 2))
    finally:
        for s in sets:
            s.close()
    return {k: v ** 0.5 for k, v in sq.items()}


def near_copies(target: ResolvedModel, peers: list[ResolvedModel]) -> dict[str, str]:
    """{peer name: why it is set aside} for the target itself, its copies and its near-copies."""
    out = {p.name: "the target itself" for p in peers if _same_model(target, p)}
    rest = [p for p in peers if p.name not in out]
    if not rest:
        return out
    d = distances([target, *rest])
    for k, p in enumerate(rest, start=1):
        to_target = d[(0, k)]
        others = [d[(i, j)] for i, j in d if i and j and k not in (i, j)]
        if to_target == 0.0:
            out[p.name] = "a copy of the target (identical weights)"
        elif len(rest) >= 3 and others and to_target < NEAR * min(others):
            out[p.name] = (f"a near-copy of the target (weight distance {to_target:.3g}, under {NEAR:.0%} of the "
                           f"closest two other peers' {min(others):.3g})")
    return out
