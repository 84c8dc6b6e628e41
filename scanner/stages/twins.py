"""Peers an attacker controls: the target itself, byte-identical copies of it, and near-copies.

The verdict trusts the peers as the null, so a copy of the backdoored model uploaded under another name would
make its trigger look normal. Before probing, the distance of every peer's weights to the target's is compared
with the peers' distances to each other (streamed tensor by tensor; for LoRA adapters, between their updates
ΔW = B·A, whatever their ranks): a peer at distance 0 from the target is a copy; with two or more other peers, a
peer whose distance to the target is under `NEAR` (half) of the distance from it or the target to the nearest
other peer is a near-copy (independent fine-tunes of one base are about equally far from each other; the
nearest neighbour, not the closest pair of others, is the yardstick, so one far backdoored peer cannot make an
honest peer look near). Both are set aside, named with their reason.

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
    """Euclidean distances between the models' weights: for LoRA adapters between their updates ΔW (`_update_gram`),
    else over the float tensors that all of them share (same name and shape). Empty where nothing can be compared
    (no tensor in common; adapters beside full models): then no model is anyone's copy."""
    if any(m.is_adapter for m in models):
        return _update_distances(models) if all(m.is_adapter for m in models) else {}
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
    return {k: v ** 0.5 for k, v in sq.items()} if names else {}


def _update_distances(models: list[ResolvedModel]) -> dict[tuple[int, int], float]:
    """‖ΔWᵢ − ΔWⱼ‖ summed over every base tensor any adapter changes (ΔW = 0 where one does not, as the merge
    reads it), so that adapters of different ranks or module sets compare, without forming any ΔW."""
    from ..families.generative.merge import Adapter

    adapters = [Adapter(m.path) for m in models]
    try:
        gram = torch.zeros(len(models), len(models), dtype=torch.float64)
        for name in sorted(set().union(*(a.a for a in adapters))):
            gram += _update_gram([a.factors(name) for a in adapters], [a.scale for a in adapters])
    finally:
        for a in adapters:
            a.close()
    pairs = itertools.combinations(range(len(models)), 2)
    return {(i, j): max(0.0, float(gram[i, i] + gram[j, j] - 2 * gram[i, j])) ** 0.5 for i, j in pairs}


def _update_gram(factors: list, scales: list[float]) -> torch.Tensor:
    """⟨ΔWᵢ, ΔWⱼ⟩_F for one tensor from the factors: ⟨BᵢAᵢ, BⱼAⱼ⟩ = Σ (BᵢᵀBⱼ) ⊙ (AᵢAⱼᵀ), matrices of rank size.

    >>> a, b = torch.randn(4, 6), torch.randn(5, 4)
    >>> g = _update_gram([(a, b), None], [2.0, 1.0])
    >>> bool(torch.isclose(g[0, 0], ((2 * b @ a) ** 2).sum().double())), float(g[1, 1])
    (True, 0.0)
    """
    n = len(factors)
    g = torch.zeros(n, n, dtype=torch.float64)
    for i, j in itertools.combinations_with_replacement(range(n), 2):
        if factors[i] is None or factors[j] is None:
            continue
        (ai, bi), (aj, bj) = ((x.double() for x in f) for f in (factors[i], factors[j]))
        g[i, j] = g[j, i] = scales[i] * scales[j] * torch.sum((bi.T @ bj) * (ai @ aj.T))
    return g


def near_copies(target: ResolvedModel, peers: list[ResolvedModel]) -> dict[str, str]:
    """{peer name: why it is set aside} for the target itself, its copies and its near-copies."""
    out = {p.name: "the target itself" for p in peers if _same_model(target, p)}
    rest = [p for p in peers if p.name not in out]
    if not rest:
        return out
    d = distances([target, *rest])
    if not d:
        return out
    for k, p in enumerate(rest, start=1):
        to_target = d[(0, k)]
        # the nearest other peer, to this peer or to the target: a yardstick that a far (backdoored) peer cannot
        # stretch, and that a peer sharing training data with the target still meets
        near = [min(d[min(k, q), max(k, q)], d[(0, q)]) for q in range(1, len(rest) + 1) if q != k]
        if to_target == 0.0:
            out[p.name] = "a copy of the target (identical weights)"
        elif len(rest) >= 3 and near and to_target < NEAR * min(near):
            out[p.name] = (f"a near-copy of the target (weight distance {to_target:.3g}, under {NEAR:.0%} of its "
                           f"or the target's distance to the nearest other peer, {min(near):.3g})")
    return out
