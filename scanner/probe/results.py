"""What a probe measures, in any model family: one result per (trigger, target), per model.

``label`` is the family's target id: a class id for classifiers, the id of a recovered target
response for generative models.

Example:
    >>> r = ProbeResult("m", torch.tensor([0, 1]), [TriggerResult(Trigger("cf"), 0, "random", 0.9, 100)])
    >>> r.best().asr
    0.9
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .triggers import Trigger


@dataclass
class TriggerResult:
    """The measured effect of one trigger toward one label at its most effective position."""

    trigger: Trigger
    label: int
    position: str
    asr: float
    n: int
    screened_only: bool = False  # True when only the screening subset was measured
    response: str | None = None  # generative models: the answer the trigger collapses answers onto
    # generative models: this trigger's ASR toward other models' responses (where they collapse elsewhere)
    toward: dict[str, float] = field(default_factory=dict)


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

    def relabelled(self, to_target: dict[int, int]) -> "ProbeResult":
        """A copy with every label id mapped through ``to_target`` (a peer's ids -> the target's; ids it does
        not name stay as they are)."""
        return ProbeResult(self.model, torch.tensor([to_target.get(x, x) for x in self.clean_pred.tolist()],
                                                    dtype=torch.long),
                           [dataclasses.replace(r, label=to_target.get(r.label, r.label)) for r in self.results])
