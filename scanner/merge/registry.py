"""The merge-method registry: a decorator turns a plain tensor function into a named method.

A method function takes the models' versions of one tensor stacked on dim 0 (float32, target
first), the base's version (float32, or ``None``), the per-model weights and the `MergeParams`,
and returns the merged tensor. The streaming driver (`scanner.merge.driver`) calls it once per
tensor name; methods never see whole models.

Example:
    >>> @merge_method("mean_of_two", needs_base=False)
    ... def mean_of_two(tensors, base, weights, params):
    ...     return tensors[:2].mean(0)
    >>> get("mean_of_two").needs_base
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class MergeParams:
    """Knobs shared by the methods; each method reads the ones it needs."""

    density: float = 0.5  # TIES / DARE: share of each task vector kept
    lam: float = 1.0  # task-vector scale (λ)
    seed: int = 0  # DARE's random drop
    name: str = ""  # the tensor's name (DARE derives its per-tensor seed from it)
    stats: tuple = ()  # per-model whole-tensor statistics, for methods that declare ``stats``


MethodFn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor, MergeParams], torch.Tensor]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MethodFn
    needs_base: bool
    default_weight: str  # "mean" (weights 1/N) or "one" (weights 1)
    doc: str
    elementwise: bool = True  # each output entry depends only on the same entry of the inputs
    params: tuple[str, ...] = ()  # the MergeSpec knobs it reads, as the report names them: lambda, density, seed
    linear: bool = False  # the merge is linear in the models' weights (a blend with the target is the same merge)
    # Optional first pass: a statistic of each model's whole task vector (delta from the base),
    # computed one model at a time, after which the method is elementwise (TIES's trim threshold).
    stats: Callable[[torch.Tensor, "MergeParams"], object] | None = None
    # LoRA adapters only: the method combines each adapter's A and B factors separately (the update is then
    # scale·B̄·Ā), instead of the updates ΔW = scale·B·A; kept so that benchmarks can compare with it.
    factors: bool = False
    # The same statistic from a tensor read in chunks: ``stream_stats(chunks, n, params)``, ``chunks()`` yielding
    # the task vector's pieces (called as often as it needs); the driver uses it for tensors over its chunk size.
    stream_stats: Callable | None = None

    def default_weights(self, n: int) -> list[float]:
        return [1.0 / n] * n if self.default_weight == "mean" else [1.0] * n


REGISTRY: dict[str, MergeMethod] = {}


def merge_method(
    name: str, *, needs_base: bool, default_weight: str = "mean", elementwise: bool = True, stats=None,
    params: tuple[str, ...] = (), linear: bool = False, factors: bool = False, stream_stats=None,
) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` as merge method ``name``.

    ``elementwise`` methods may be fed a tensor in row chunks (bounded memory for large
    embedding matrices); others always get whole tensors. A method whose only whole-tensor step
    is a per-model statistic (TIES ranks each task vector to find its trim threshold) declares
    ``stats``: the driver computes it one model at a time and then feeds row chunks. ``params`` names
    the knobs the method reads (reported with every merge); ``linear`` marks merges that are linear in
    the models' weights; ``factors`` marks a LoRA-only method applied to the A and B factors.
    """

    def deco(fn: MethodFn) -> MethodFn:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        REGISTRY[name] = MergeMethod(name, fn, needs_base, default_weight, doc, elementwise, params, linear, stats,
                                     factors, stream_stats)
        return fn

    return deco


def get(name: str) -> MergeMethod:
    from ..errors import HfscanError

    try:
        return REGISTRY[name]
    except KeyError:
        raise HfscanError(f"unknown merge method {name!r}; choose one of {', '.join(sorted(REGISTRY))}") from None


def names() -> list[str]:
    return sorted(REGISTRY)
