"""The classifier family's clean bound: what a defense candidate costs in clean accuracy, and the
reference it is read against (probe labels, or the majority vote of the target and its peers).

Example:
    >>> y = torch.tensor([0, 0, 1, 1])
    >>> clean_cost(y, y, y)["drop"]
    0.0
"""

from __future__ import annotations

import torch

from ..noise import NOISE_Z, paired_excess

SKEW = 3.0  # the class mix the bound also reads: one class 3x as common as each other one


def clean_cost(pred: torch.Tensor, target_pred: torch.Tensor, reference: torch.Tensor,
               skew: float = SKEW, z: float = NOISE_Z) -> dict:
    """How much clean accuracy a candidate loses against the target, as the bound reads it.

    ``drop`` is the larger of two readings:

    * the accuracy drop on the probe as it is (``accuracy_drop``);
    * the worst drop at a class mix where one class is ``skew`` times as common as each other one (3:1
      for two classes: OLID test is 72% "not offensive"), from the per-class recall changes. Accuracy is
      linear in the mix, so this is ``((skew - 1)·d_c + Σ d) / (K - 1 + skew)``, maximised over c.
      Each recall change ``d_c`` is first shrunk toward zero by ``z`` standard errors of a paired
      difference (``b`` inputs of the class the candidate breaks, ``g`` it fixes:
      ``se² = (b + g - (b - g)²/n) / n²``), so a shift of a few inputs, which any merge makes, reads as
      no shift, and only a real trade of one class's recall for another's costs anything.

    >>> y = torch.tensor([0] * 100 + [1] * 100)
    >>> traded = y.clone(); traded[:20] = 1  # class 0 loses a fifth of its recall, class 1 unchanged
    >>> c = clean_cost(traded, y, y)
    >>> c["accuracy_drop"], c["class_drops"], c["drop"]  # 20 - 1.645·4 = 13.4 points counted, at 3:1
    (0.1, [0.2, 0.0], 0.1007)
    >>> shifted = y.clone(); shifted[:3] = 1  # three inputs: within sampling noise
    >>> clean_cost(shifted, y, y)["drop"]  # the plain accuracy drop alone
    0.015
    """
    plain = float((target_pred == reference).float().mean() - (pred == reference).float().mean())
    raw, shrunk = [], []
    for c in reference.unique().tolist():
        m = reference == c
        n = int(m.sum())
        was, now = target_pred[m] == c, pred[m] == c
        b, g = int((was & ~now).sum()), int((now & ~was).sum())
        raw.append((b - g) / n)
        shrunk.append(paired_excess(b, g, n, z))
    k = len(shrunk)
    skewed = max(((skew - 1) * d + sum(shrunk)) / (k - 1 + skew) for d in shrunk) if k > 1 else plain
    return {"drop": round(max(plain, skewed), 4), "accuracy_drop": round(plain, 4),
            "class_drops": [round(d, 4) for d in raw]}


def majority_labels(preds: list[torch.Tensor], num_labels: int) -> torch.Tensor:
    """Per input, the label most models predict (ties to the first model's prediction)."""
    stacked = torch.stack(preds)
    counts = torch.nn.functional.one_hot(stacked, num_labels).sum(0)
    best = counts.argmax(-1)
    tie = (counts == counts.max(-1, keepdim=True).values).sum(-1) > 1
    return torch.where(tie, stacked[0], best)
