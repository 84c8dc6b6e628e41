"""The generative family's clean bound: what a defense candidate costs in clean behaviour, read two ways on
the clean probe prompts.

The reference is every model's answers, one row per model, the target's first (`GenerativeFamily.clean_reference`):

* **answer agreement**: on the prompts where a strict majority of the models give one answer (`consensus`),
  the share answered that way, against the target's share. Prompts without a majority are not read: there
  the "consensus" would be the target's own answer, and every merge would look like a loss. Exact answers are
  a coarse reading: on 64 prompts one prompt is 1.6 points, so the drop counts only beyond ``z`` standard
  errors of the paired difference (as the classifier's class recalls do, docs/decisions.md D10);
* **answer loss**: the mean per-token negative log-likelihood of every model's answers (each model one
  voice), teacher-forced (`CausalLM.answer_loss`), against the target's: a smooth reading that sees a merge
  that makes the model less sure of good answers before its greedy answers change. Its relative rise counts
  as it is. (A model predicts its own greedy answers best: scored on the target's answers alone, any merge
  reads as a loss, docs/decisions.md D37.)

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
    >>> consensus(torch.tensor([[3, 3, 5], [3, 4, 6], [1, 4, 7]]))  # three models, three prompts
    tensor([ 3,  4, -1])
"""

from __future__ import annotations

import torch

from ..noise import NOISE_Z, paired_excess


def consensus(rows: torch.Tensor) -> torch.Tensor:
    """Per prompt (column), the answer id that a strict majority of the rows (models) give, else -1."""
    counts = torch.stack([(rows == r).sum(0) for r in rows])  # [i, p]: rows that answer p like row i
    best = counts.argmax(0)
    top = rows.gather(0, best[None])[0]
    return torch.where(counts.max(0).values * 2 > rows.shape[0], top, torch.full_like(top, -1))


def on_consensus(reference: torch.Tensor, *preds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A reference of rows read on its consensus: the consensus answers where a strict majority agrees, then each
    of ``preds`` on those prompts. A reference of one answer per prompt is read as it is."""
    if reference.dim() == 1:
        return (reference, *preds)
    ref = consensus(reference)
    read = ref >= 0
    return (ref[read], *(p[read] for p in preds))


def generative_cost(pred: torch.Tensor, target_pred: torch.Tensor, reference: torch.Tensor,
                    losses: tuple[float, float] | None = None, z: float = NOISE_Z) -> dict:
    """The candidate's cost: ``drop`` (what the bound reads), ``agreement_drop`` (undiscounted, over the
    ``consensus_prompts`` a majority agrees on), ``answer_agreement`` (with the target's own answers) and, given
    ``losses`` (candidate, target), ``loss_rise``. ``reference``: one answer per prompt, or one row per model."""
    answer_agreement = round(float((pred == target_pred).float().mean()), 4) if len(pred) else 1.0
    reference, pred, target_pred = on_consensus(reference, pred, target_pred)
    was, now = target_pred == reference, pred == reference
    lost, gained = int((was & ~now).sum()), int((now & ~was).sum())
    n = len(reference)
    out = {"agreement_drop": round((lost - gained) / n, 4) if n else 0.0, "consensus_prompts": n,
           "answer_agreement": answer_agreement}
    drop = paired_excess(lost, gained, n, z)
    if losses is not None and losses[1] > 0:
        out["loss_rise"] = round((losses[0] - losses[1]) / losses[1], 4)
        drop = max(drop, out["loss_rise"])
    return {"drop": round(drop, 4), **out}
