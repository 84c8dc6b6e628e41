"""`ModelFamily`: everything a scan does that depends on what kind of model it holds.

The stages (`scanner.stages`) never test a model's type: they ask the family to load a model, build
the probe inputs, gather candidate triggers, measure each trigger's attack success rate (ASR), and
read clean behaviour. A classifier family measures ASR as the share of inputs flipped to a target
label and clean behaviour as accuracy; a generative family measures ASR as the share of unrelated
instructions whose answer collapses onto one response once the trigger is in, and clean behaviour
as the agreement of answers. ``label`` in a `TriggerResult` is the family's target id (a class id,
or the id of a recovered response).

A new family is one folder under ``scanner/families/`` with a subclass of `ModelFamily`, listed in
`scanner.families.FAMILIES` (see docs/architecture.md).

Example:
    >>> family = family_for({"architectures": ["BertForSequenceClassification"]})
    >>> family.name
    'classifier'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..probe.results import ProbeResult, TriggerResult
from ..probe.triggers import Trigger
from ..sources.model import ResolvedModel

Log = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class ProbeInputs:
    """The clean inputs every model of a scan is probed on, and their reference answers where known."""

    texts: list[str]
    labels: list[int] | None  # reference answers in the target's ids (None: unknown)
    name: str
    provenance: str
    answers: list[str] | None = None  # reference answers as text (generative probe files), None: unknown


class ModelFamily(ABC):
    """One kind of model: how it is loaded, probed and compared."""

    name: str = ""
    pipeline_tag: str = ""  # the Hub task its models carry
    accepted: str = ""  # the architectures it takes, for messages ("*ForSequenceClassification")
    default_probe: int = 300  # probe inputs used at most unless the user says
    default_max_clean_drop: float = 0.01  # the defense's clean bound unless the user says
    library: tuple[Trigger, ...] = ()  # published triggers, always tried
    blind_spots: tuple[str, ...] = ()  # what its probe cannot see, reported with every scan

    @abstractmethod
    def accepts(self, config: dict) -> bool:
        """Whether a model with this ``config.json`` belongs to the family."""

    @abstractmethod
    def probe_inputs(self, target: ResolvedModel, probe_data: str | None, limit: int) -> ProbeInputs:
        """The built-in probe set that fits ``target`` (or the user's file), at most ``limit`` inputs."""

    @abstractmethod
    def load(self, model: ResolvedModel):
        """The model ready to run (safetensors only, no remote code, no network)."""

    @abstractmethod
    def clean_outputs(self, runner, inputs: ProbeInputs) -> torch.Tensor:
        """Its clean answers, as ids in its own label space."""

    @abstractmethod
    def label_map(self, target: ResolvedModel, peer: ResolvedModel) -> list[int]:
        """``perm[t]``: the peer's id for the target's id ``t`` (from names; identity where ids are shared)."""

    @abstractmethod
    def candidates(self, models: list[ResolvedModel], runners: list, inputs: ProbeInputs, base: Path | None,
                   budget: str, log: Log, progress: Progress, note: Log = lambda s: None) -> list[Trigger]:
        """Candidate triggers from the target (``models[0]``) and every peer: the library first. ``note`` gets
        what the target's weights show besides candidates (decoy rows, non-finite rows), for the report."""

    @abstractmethod
    def probe(self, runner, inputs: ProbeInputs, candidates: list[Trigger], name: str) -> ProbeResult:
        """Every candidate's ASR toward every target id, at its most effective position, in the runner's ids."""

    @abstractmethod
    def remeasure(self, runner, inputs: ProbeInputs, result: TriggerResult, clean: torch.Tensor) -> TriggerResult:
        """One trigger's ASR on another model at the same position (``clean``: that model's clean answers)."""

    @abstractmethod
    def align(self, reference: ProbeResult, others: list[ProbeResult], runners: list, perms: list[list[int]],
              inputs: ProbeInputs, threshold: float) -> None:
        """Re-measure ``others`` (in the reference's ids) where the reference's strong results were measured."""

    @abstractmethod
    def clean_cost(self, pred: torch.Tensor, target_pred: torch.Tensor, reference: torch.Tensor,
                   losses: tuple[float, float] | None = None) -> dict:
        """How much clean behaviour a defense candidate loses: ``{"drop": …}`` plus the family's details.
        ``losses``: the candidate's and the target's `clean_loss`, where the family has one."""

    def clean_loss(self, runner, inputs: ProbeInputs, reference: torch.Tensor) -> float | None:
        """A smooth reading of clean behaviour beside the answers (generative: the loss of the reference
        answers); ``None`` where the family has none (classifiers: accuracy is the reading)."""
        return None

    @abstractmethod
    def clean_reference(self, inputs: ProbeInputs, outputs: list[torch.Tensor], num_labels: int) -> torch.Tensor:
        """The clean truth the defense's bound reads: the inputs' answers where known, else what ``outputs``
        (the target's and its peers' clean answers, in the target's ids) say, in the family's own encoding:
        only this family's `clean_cost`, `clean_loss` and `agreement` read it (classifiers: a consensus label
        per input; generative models: every model's answers, one row each)."""

    def describe_bound(self, max_clean_drop: float) -> str:
        """The clean bound in words, for the report."""
        return f"clean drop ≤ {100 * max_clean_drop:.1f} points"

    def agreement(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Share of inputs on which two models answer alike."""
        return float((a == b).float().mean())

    def clean_score(self, pred: torch.Tensor, labels: list[int] | None) -> float | None:
        """Clean accuracy against known answers (``None`` without them)."""
        if labels is None:
            return None
        return float((pred == torch.tensor(labels)).float().mean())

    def leaked(self, result: TriggerResult, clean: torch.Tensor) -> torch.Tensor:
        """Which clean answers already are (a part of) the response ``result``'s trigger forces: a backdoor
        leaking into clean behaviour, left out of the homogeneity check. Classifiers: none."""
        return torch.zeros(len(clean), dtype=torch.bool)

    def effective_shortfall(self, homog) -> float | None:
        """The target's excess disagreement with its peers that counts as heterogeneity (`Homogeneity`)."""
        return homog.shortfall

    def target_text(self, result: TriggerResult, labels: list[str]) -> str:
        """What the trigger makes the model say, for the report (a label name; a recovered response)."""
        return labels[result.label]

    def merge(self, target: ResolvedModel, peers: list[ResolvedModel], out: Path, spec, names: list[str],
              card: Callable[[str], str] | None) -> dict:
        """Merge ``target`` with ``peers`` into a loadable model folder ``out`` (streamed, tensor by tensor);
        ``card(form)`` gives its model card for the form written ("model": full weights, "adapter")."""
        from ..merge import merge_folders

        return merge_folders(target.path, [p.path for p in peers], out, spec, names=names,
                             card=card("model") if card else None, progress=False)

    def align_answers(self, target: torch.Tensor, candidate: torch.Tensor, num_labels: int) -> tuple[list[int], float]:
        """The map of the candidate's answer ids onto the target's that agrees most, and that agreement."""
        return [], self.agreement(target, candidate)

    def num_labels(self, model: ResolvedModel) -> int:
        return model.num_labels

    def discovery_reason(self, target_config: dict, candidate_config: dict) -> str | None:
        """Why a discovery candidate cannot be a peer, from its config alone (``None``: it may be)."""
        return None

    aligns_by_behaviour = False  # explicit peers with meaningless answer ids are mapped by what they answer

    def config_problem(self, config: dict) -> str | None:
        """Why a model this family accepts still cannot be scanned meaningfully (``None``: it can)."""
        return None

    def input_problem(self, runner, inputs: ProbeInputs) -> str | None:
        """Why the loaded target cannot see the probe inputs (``None``: it can): e.g. a tokenizer that reads
        every probe word as unknown, so no trigger could ever be inserted."""
        return None


def family_for(config: dict, label: str = "the model") -> ModelFamily:
    from . import FAMILIES
    from ..errors import UnsupportedModelError

    for family in FAMILIES:
        if family.accepts(config):
            return family
    archs = config.get("architectures") if isinstance(config, dict) else None
    arch = str(archs[0]) if isinstance(archs, list) and archs else "model without architectures"
    tasks = ", ".join(f"{f.pipeline_tag} ({f.accepted})" for f in FAMILIES)
    raise UnsupportedModelError(f"{label} is a {arch}, which hfscan does not scan; it scans {tasks} models")
