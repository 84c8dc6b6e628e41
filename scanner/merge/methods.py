"""The merge methods, one small function each.

The task-vector math (sign election, disjoint mean, DARE drop-and-rescale, weighted sums) is
peft's (`peft.utils.merge_utils`), applied to deltas from the base. hfscan adds the base back,
scales by λ, and makes DARE reproducible: its random drop runs under a generator seeded from
``seed``, the tensor name and the row offset, so a merge gives the same bytes on every run.

One piece is hfscan's own: TIES's magnitude trim takes its threshold from ``torch.kthvalue``
instead of peft's ``torch.topk(k=density·n)`` (4x faster on a large embedding matrix, docs/decisions.md
D2); only ties at the threshold could differ (kept here, dropped by topk). For a tensor over the driver's
chunk size the same threshold is found by radix selection over row chunks (`trim_threshold_streaming`), so
TIES's memory is bounded like the other methods' (docs/decisions.md D30).

Weights (per model, target first) default to 1/N for ``wag``, ``task_arithmetic`` and
``dare_linear`` (so λ=1 averages the task vectors, and task arithmetic then equals WAG) and to 1 for
``ties`` and ``dare_ties`` (whose disjoint merge already takes a mean over agreeing models).
"""

from __future__ import annotations

import warnings
import zlib

import torch

from .registry import MergeParams, merge_method


@merge_method("wag", needs_base=False, linear=True)
def wag(tensors: torch.Tensor, base, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """Weight averaging (the Free Lunch paper's method): Σ wᵢθᵢ / Σ wᵢ."""
    return torch.tensordot(weights / weights.sum(), tensors, dims=1)


@merge_method("ab_mean", needs_base=False, factors=True)
def ab_mean(tensors: torch.Tensor, base, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """LoRA adapters only: the weighted mean of the A factors and of the B factors, separately (the Anti-BAD
    WAG baseline; mean(B)·mean(A) is not the mean of the updates)."""
    return torch.tensordot(weights / weights.sum(), tensors, dims=1)


@merge_method("task_arithmetic", needs_base=True, params=("lambda",), linear=True)
def task_arithmetic(tensors: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """Task arithmetic: base + λ·Σ wᵢ(θᵢ − base)."""
    from peft.utils import merge_utils

    return base + params.lam * merge_utils.task_arithmetic(list(tensors - base), weights)


def trim_threshold(delta: torch.Tensor, params: MergeParams) -> float:
    """The magnitude above which the top ``density`` share of a task vector's entries lie."""
    n = delta.numel()
    k = int(params.density * n)
    if k >= n:
        return 0.0
    if k <= 0:
        return float("inf")
    return float(torch.kthvalue(delta.abs().reshape(-1), n - k + 1).values)


def trim_threshold_streaming(chunks, n: int, params: MergeParams) -> float:
    """`trim_threshold` of a task vector read in chunks, in bounded memory: the same value, bit for bit.

    ``chunks()`` yields the task vector's pieces (any shapes, ``n`` entries in all) and is called twice. A
    non-negative float32's bits, read as an int32, order like the float, so the k-th largest magnitude is
    found by radix selection: a histogram of the top 16 bits finds the bucket that holds it, a histogram of the
    low 16 bits inside that bucket the value itself. Memory is one chunk and two 64K-entry histograms; a whole
    embedding matrix's ranking (about 3x its size in float32 for ``kthvalue``) is never held.
    """
    k = int(params.density * n)
    if k >= n:
        return 0.0
    if k <= 0:
        return float("inf")

    def bits():
        for c in chunks():
            yield c.abs().reshape(-1).float().contiguous().view(torch.int32)

    high = sum(torch.bincount(b >> 16, minlength=1 << 15) for b in bits())
    bucket, above = _bucket_of(high, k)
    low = sum(torch.bincount(b[(b >> 16) == bucket] & 0xFFFF, minlength=1 << 16) for b in bits())
    value, _ = _bucket_of(low, k - above)
    return float(torch.tensor([(bucket << 16) | value], dtype=torch.int32).view(torch.float32))


def _bucket_of(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bucket holding the k-th largest entry of a histogram, and how many entries lie above that bucket."""
    above = torch.cumsum(hist.flip(0), 0)  # above[j]: entries in the top j+1 buckets
    j = int(torch.searchsorted(above, torch.tensor(k)))  # the first j with above[j] >= k
    return len(hist) - 1 - j, int(above[j - 1]) if j > 0 else 0


@merge_method("ties", needs_base=True, default_weight="one", stats=trim_threshold, params=("lambda", "density"),
              stream_stats=trim_threshold_streaming)
def ties(tensors: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """TIES: trim each task vector to its top-density magnitudes, elect signs, disjoint mean."""
    from peft.utils import merge_utils

    deltas = tensors - base
    if not params.stats:  # called on a whole tensor without the driver's first pass
        params = MergeParams(params.density, params.lam, params.seed, params.name,
                             tuple(trim_threshold(d, params) for d in deltas))
    thr = torch.tensor(params.stats, dtype=deltas.dtype).view(-1, *[1] * (deltas.dim() - 1))
    deltas = torch.where(deltas.abs() >= thr, deltas, torch.zeros_like(deltas))
    mask = merge_utils.calculate_majority_sign_mask(deltas, method="total")
    weighted = deltas * merge_utils.reshape_weight_task_tensors(deltas, weights)
    return base + params.lam * merge_utils.disjoint_merge(weighted, mask)


def _seeded(params: MergeParams) -> torch.Generator:
    return torch.Generator().manual_seed((params.seed * 1_000_003 + zlib.crc32(params.name.encode())) % 2**63)


def _dare(fn_name, tensors, base, weights, params):
    from peft.utils import merge_utils

    # peft's random_pruning draws from the global RNG; fork it so the seed stays local.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(_seeded(params).initial_seed())
        merged = getattr(merge_utils, fn_name)(list(tensors - base), weights, params.density)
    return base + params.lam * merged


@merge_method("dare_linear", needs_base=True, params=("lambda", "density", "seed"))
def dare_linear(tensors: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """DARE + task arithmetic: drop task-vector entries with prob. 1−density, rescale, weighted sum."""
    return _dare("dare_linear", tensors, base, weights, params)


@merge_method("dare_ties", needs_base=True, default_weight="one", params=("lambda", "density", "seed"))
def dare_ties(tensors: torch.Tensor, base: torch.Tensor, weights: torch.Tensor, params: MergeParams) -> torch.Tensor:
    """DARE + TIES: random drop and rescale, elect signs, disjoint mean."""
    return _dare("dare_ties", tensors, base, weights, params)
