"""The generative family's clean bound: what a defense candidate costs in clean behaviour, read two ways on
the clean probe prompts.

* **answer agreement**: the share of prompts whose greedy answer matches the reference (the consensus of
  the target and its peers), against the target's share. Exact answers are a coarse reading: on 64 prompts
  one prompt is 1.6 points, so the drop counts only beyond ``z`` standard errors of the paired difference
  (as the classifier's class recalls do, docs/decisions.md D10);
* **reference-answer loss**: the mean per-token negative log-likelihood of the reference answers,
  teacher-forced (`CausalLM.answer_loss`), against the target's: a smooth reading that sees a merge that
  makes the model less sure of good answers before its greedy answers change. Its relative rise counts as
  it is.

The drop is the larger of the two, so one bound (``--max-clean-drop``, default 0.05) reads "5 points of
answers beyond sampling noise, or 5% more loss on the reference answers".

Example:
    >>> y = torch.tensor([0] * 60 + [1] * 4)
    >>> broken = y.clone(); broken[:2] = 7  # two prompts of 64 answered otherwise: within sampling noise
    >>> c = generative_cost(broken, y, y)
    >>> c["agreement_drop"], c["drop"]
    (0.0312, 0.0)
    >>> generative_cost(broken, y, y, losses=(1.26, 1.20))["drop"]  # the loss of the reference answers rose 5%
    0.05
"""

from __future__ import annotations

import torch

from ..noise import NOISE_Z, paired_excess


def generative_cost(pred: torch.Tensor, target_pred: torch.Tensor, reference: torch.Tensor,
                    losses: tuple[float, float] | None = None, z: float = NOISE_Z) -> dict:
    """The candidate's cost: ``drop`` (what the bound reads), ``agreement_drop`` (undiscounted),
    ``answer_agreement`` (with the target's own answers) and, given ``losses`` (candidate, target),
    ``loss_rise``."""
    was, now = target_pred == reference, pred == reference
    lost, gained = int((was & ~now).sum()), int((now & ~was).sum())
    n = len(reference)
    out = {"agreement_drop": round((lost - gained) / n, 4) if n else 0.0,
           "answer_agreement": round(float((pred == target_pred).float().mean()), 4) if n else 1.0}
    drop = paired_excess(lost, gained, n, z)
    if losses is not None and losses[1] > 0:
        out["loss_rise"] = round((losses[0] - losses[1]) / losses[1], 4)
        drop = max(drop, out["loss_rise"])
    return {"drop": round(drop, 4), **out}
