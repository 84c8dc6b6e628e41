"""Attack success rate and clean behaviour.

ASR of a trigger for target label ``t`` = among probe inputs the model does *not* already put in
``t``, the share it puts in ``t`` once the trigger is inserted. Clean behaviour is accuracy where
the probe set has labels matched to the model's, and agreement with a reference model's clean
predictions (the target's) otherwise.

Random insertion positions are drawn per input from a fixed seed, so the target, its peers and
the defended variant see exactly the same triggered texts. Triggered texts run through the
classifier's ``fast`` view (bfloat16 where native, see `scanner.probe.classifier.probe_dtype`); the
clean predictions that decide which inputs are eligible are the caller's (float32).

Example:
    >>> asr, n = attack_success_rate(clf, texts, clf.predict(texts), Trigger("cf"), 0, "random")
"""

from __future__ import annotations

import random

import torch

from ...probe.triggers import Trigger, insert


def triggered_texts(texts: list[str], idx: list[int], trigger: Trigger, position: str, seed: int = 0) -> list[str]:
    return [insert(texts[i], trigger, position, random.Random(f"{seed}:{i}")) for i in idx]


def attack_success_rate(
    clf,
    texts: list[str],
    clean_pred: torch.Tensor,
    trigger: Trigger,
    label: int,
    position: str,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[float, int]:
    """Return ``(asr, n)``: the flip rate to ``label`` over ``n`` eligible inputs."""
    idx = [i for i, p in enumerate(clean_pred.tolist()) if p != label]
    if limit is not None:
        idx = idx[:limit]
    if not idx:
        return 0.0, 0
    pred = getattr(clf, "fast", clf).predict(triggered_texts(texts, idx, trigger, position, seed))
    return float((pred == label).float().mean()), len(idx)


def accuracy(pred: torch.Tensor, labels: list[int] | None) -> float | None:
    if labels is None:
        return None
    return float((pred == torch.tensor(labels)).float().mean())


def agreement(pred: torch.Tensor, reference: torch.Tensor) -> float:
    return float((pred == reference).float().mean())
