"""Candidate triggers for a generative scan: the published library, then each model's weight-space
outliers (`differential.first_layer_outliers`, adapters and full fine-tunes alike)
and, for the target, pairs of its top outliers (a two-word trigger whose words do nothing alone).

Example:
    >>> cands = gather([target, *peers], [target_lm, *peer_lms], base=base_folder)
"""

from __future__ import annotations

from pathlib import Path

from ...probe.triggers import Trigger
from ...sources.model import ResolvedModel
from ..classifier.differential import insertable_tokens
from .differential import first_layer_outliers
from .library import LIBRARY


def gather(models: list[ResolvedModel], runners: list, base: Path | None = None, top_k: int = 5, pair_k: int = 3,
           log=lambda s: None, progress=lambda done, total: None) -> list[Trigger]:
    allowed = insertable_tokens(runners[0].tokenizer)
    union: list[Trigger] = list(LIBRARY)
    progress(0, len(models))
    for i, (m, lm) in enumerate(zip(models, runners)):
        others = [o for j, o in enumerate(models) if j != i]
        if not others:
            break
        ref = m.base_path or base
        if ref is None:  # a full fine-tune without a known base: no reference to measure shifts from
            log("no base model known: the weight-space differential is skipped (give --base BASE)")
            break
        outliers = first_layer_outliers(m.path, [o.path for o in others], ref, allowed, top_k=top_k,
                                        adapter_base=m.base_path)
        mine = [Trigger(s.text, "word", "differential") for s in outliers]
        if i == 0:
            top = outliers[:pair_k]
            mine += [Trigger(f"{a.text} {b.text}", "word", "differential") for a in top for b in top if a is not b]
        union += mine
        progress(i + 1, len(models))
        log(f"candidates from {lm.name}: " + ", ".join(repr(t.text) for t in mine[:8]) + (" …" if len(mine) > 8 else ""))
    seen: dict[str, Trigger] = {}
    for t in union:
        seen.setdefault(t.text, t)
    return list(seen.values())
