"""The merge methods, one small function each.

The task-vector math (TIES trim / sign election / disjoint mean, DARE drop-and-rescale) is
peft's (`peft.utils.merge_utils`), applied to deltas from the base. hfscan adds the base back,
scales by λ, and makes DARE reproducible: its random drop runs under a generator seeded from
``seed`` and the tensor name, so a merge gives the same bytes on every run and in any order.

Weights (per model, target first) default to 1/N for ``wag``, ``task_arithmetic`` and
``dare_linear`` (so λ=1 averages the task vectors, and task arithmetic then equals WAG) and to 1 for
``ties`` and ``dare_ties`` (whose disjoint merge already takes a mean over agreeing models).
"""

from __future__ import annotations

import warnings
import zlib

import torch
from peft.utils import merge_utils

from .registry import MergeParams, merge_method


def _bcast(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return weights.view(weights.shape + (1,) * (like.dim() - 1))


@merge_method("wag", needs_base=False)
def wag(tensors: torch.Tensor, base, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """Weight averaging (the Free Lunch paper's method): Σ wᵢθᵢ / Σ wᵢ."""
    return (tensors * _bcast(weights, tensors)).sum(0) / weights.sum()


@merge_method("task_arithmetic", needs_base=True)
def task_arithmetic(tensors: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """Task arithmetic: base + λ·Σ wᵢ(θᵢ − base)."""
    return base + params.lam * merge_utils.task_arithmetic(list(tensors - base), weights)


@merge_method("ties", needs_base=True, default_weight="one")
def ties(tensors: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """TIES: trim each task vector to its top-density magnitudes, elect signs, disjoint mean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns when density >= 1 (no trimming)
        merged = merge_utils.ties(list(tensors - base), weights, params.density, "total")
    return base + params.lam * merged


def _seeded(params: MergeParams) -> torch.Generator:
    return torch.Generator().manual_seed((params.seed * 1_000_003 + zlib.crc32(params.name.encode())) % 2**63)


def _dare(fn, tensors, base, weights, params):
    # peft's random_pruning draws from the global RNG; fork it so the seed stays local.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(_seeded(params).initial_seed())
        merged = fn(list(tensors - base), weights, params.density)
    return base + params.lam * merged


@merge_method("dare_linear", needs_base=True)
def dare_linear(tensors: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """DARE + task arithmetic: drop task-vector entries with prob. 1−density, rescale, weighted sum."""
    return _dare(merge_utils.dare_linear, tensors, base, weights, params)


@merge_method("dare_ties", needs_base=True, default_weight="one")
def dare_ties(tensors: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """DARE + TIES: random drop and rescale, elect signs, disjoint mean."""
    return _dare(merge_utils.dare_ties, tensors, base, weights, params)
