"""Task-vector size: a target whose fine-tune moved the base far more than its peers' did.

Attacks built to survive merging (Merge Hijacking, a backdoor's task vector scaled ×2–3 before release) keep
behaving normally on clean inputs, but their task vector τ = θ − θ_base is several times longer than that of
an ordinary fine-tune of the same base. The norm is measured over every float tensor the target shares with
the base (same name, or the name less the task model's prefix, and the same shape), streamed tensor by tensor;
for a LoRA adapter it is ‖ΔW‖ = ‖scale · B·A‖ over its adapted modules, with no base needed. A target above
`RATIO` × the peers' median is a line in the report (`ScanReport.probe.weight_notes`): it says how the weights
were changed, not that a trigger exists.

Example:
    >>> size_note(target, [p.model for p in peers], base)[:40]
    "task vector 3.1× the peers' median (‖τ‖ "
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from ..sources.model import ResolvedModel

RATIO = 1.5


def task_vector_norm(model: ResolvedModel, base: ResolvedModel | None) -> float | None:
    """‖θ − θ_base‖ (float32) for a full fine-tune, ‖ΔW‖ for an adapter; ``None`` without a base to subtract
    or with nothing shared."""
    if model.is_adapter:
        return _adapter_norm(model)
    if base is None or base.is_adapter:
        return None
    ws, bws = model.weights(), base.weights()
    try:
        pairs = _shared(ws.header, bws.header)
        if not pairs:
            return None
        sq = sum(float(torch.sum((ws.get(n).float() - bws.get(b).float()) ** 2)) for n, b in pairs.items())
    finally:
        ws.close()
        bws.close()
    return sq ** 0.5


def _shared(header: dict, base: dict) -> dict[str, str]:
    """The model's float tensor name -> the base's (matched as the merge matches them), for the tensors both
    hold with one shape."""
    from ..merge.driver import base_tensor_name

    names = set(base)
    pairs = {n: base_tensor_name(n, names) for n, info in header.items() if info.is_float}
    return {n: b for n, b in pairs.items() if b is not None and base[b].shape == header[n].shape}


def _adapter_norm(model: ResolvedModel) -> float | None:
    from ..families.generative.merge import Adapter

    adapter = Adapter(model.path)
    try:
        sq = sum(float(torch.sum(adapter.delta(name) ** 2)) for name in adapter.a)
    finally:
        adapter.close()
    return sq ** 0.5 if adapter.a else None


@dataclass(frozen=True)
class TaskVectorSize:
    """The target's task-vector norm and its peers' median."""

    target: float
    peers_median: float

    @property
    def ratio(self) -> float:
        return self.target / self.peers_median

    @property
    def clip(self) -> float | None:
        """The factor that shrinks the target's task vector to the peers' median, when it is over `RATIO` × it."""
        return self.peers_median / self.target if self.ratio > RATIO else None

    def note(self) -> str | None:
        """The report's line, or ``None`` for an ordinary size."""
        if self.clip is None:
            return None
        return (f"task vector {self.ratio:.1f}× the peers' median (‖τ‖ {self.target:.3g} against "
                f"{self.peers_median:.3g}): the fine-tune moved the base far more than its peers did, as a backdoor "
                f"scaled up to survive merging does; merging gives the target more pull than its share")


def measure_size(target: ResolvedModel, peers: list[ResolvedModel], base: ResolvedModel | None
                 ) -> TaskVectorSize | None:
    """The target's and the peers' median task-vector norms; ``None`` without them (also with fewer than two
    peers measured: one peer's norm is no yardstick)."""
    mine = task_vector_norm(target, base)
    theirs = [n for n in (task_vector_norm(p, base) for p in peers) if n]
    if not mine or len(theirs) < 2:
        return None
    return TaskVectorSize(mine, statistics.median(theirs))


def size_note(target: ResolvedModel, peers: list[ResolvedModel], base: ResolvedModel | None) -> str | None:
    """One line when the target's task vector is over `RATIO` × the peers' median, else ``None``."""
    size = measure_size(target, peers, base)
    return size.note() if size else None
