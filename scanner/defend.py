"""Defend: merge the target with its peers into a defended variant and re-probe it.

The defended variant is a complete Hugging Face folder (sharded safetensors, config, tokenizer,
and a card that lists the merged models as ``base_model`` with ``base_model_relation: merge``).
It is produced even when no trigger was found: the merge also defends against triggers the probe
cannot see (syntactic, style).

Example:
    >>> result = defend(target, peers, Path("out/defended"), MergeSpec("wag"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .hub import ResolvedModel
from .merge import MergeSpec, merge_folders
from .report.render import environment


@dataclass
class DefenseOutcome:
    path: Path
    summary: dict  # what merge_folders returned


def card_for(target: ResolvedModel, peers: list[ResolvedModel], spec: MergeSpec, verdict: str | None = None) -> str:
    return environment().get_template("defended_card.md.j2").render(
        target=target, peers=peers, spec=spec.describe(), verdict=verdict
    )


def defend(
    target: ResolvedModel,
    peers: list[ResolvedModel],
    out: Path,
    spec: MergeSpec | None = None,
    verdict: str | None = None,
    progress: bool | None = None,
) -> DefenseOutcome:
    spec = spec or MergeSpec("wag")
    summary = merge_folders(
        target.path,
        [p.path for p in peers],
        out,
        spec,
        names=[target.name] + [p.name for p in peers],
        card=card_for(target, peers, spec, verdict),
        progress=progress,
    )
    return DefenseOutcome(out, summary)
