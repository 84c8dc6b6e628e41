"""The classifier family: encoder (and decoder) ``*ForSequenceClassification`` models.

ASR of a trigger toward label ``t`` is the share of probe inputs not already put in ``t`` that flip
to ``t`` once the trigger is inserted; clean behaviour is accuracy on the probe labels (or on the
majority vote of the target and its peers) and agreement with the target's predictions.

Example:
    >>> family = ClassifierFamily()
    >>> family.accepts({"architectures": ["BertForSequenceClassification"]})
    True
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...probe.results import ProbeResult, TriggerResult
from ...probe.triggers import Trigger
from ...sources.model import ResolvedModel
from ..interface import Log, ModelFamily, ProbeInputs, Progress
from . import data as probe_data
from .library import BLIND_SPOTS, LIBRARY
from .model import Classifier


MAX_UNKNOWN = 0.9  # share of probe tokens read as unknown above which a model is refused (English BERT: ~0%)


class ClassifierFamily(ModelFamily):
    name = "classifier"
    pipeline_tag = "text-classification"
    accepted = "*ForSequenceClassification"
    library = LIBRARY
    blind_spots = BLIND_SPOTS
    aligns_by_behaviour = True  # LABEL_0/LABEL_1 say nothing: which id is "positive" is read from the answers

    def accepts(self, config: dict) -> bool:
        archs = config.get("architectures") or []
        return isinstance(archs, list) and bool(archs) and str(archs[0]).endswith("ForSequenceClassification")

    def config_problem(self, config: dict) -> str | None:
        from ...sources.model import labels_of

        if config.get("problem_type") == "regression" or len(labels_of(config)) < 2:
            return ("a regression head (one output), not a classifier: there is no label for a trigger to flip "
                    "inputs to, so hfscan cannot probe it")
        return None

    def input_problem(self, runner: Classifier, inputs: ProbeInputs) -> str | None:
        share = runner.unknown_share(inputs.texts[:64])
        if share > MAX_UNKNOWN:
            return (f"its tokenizer reads {100 * share:.0f}% of the probe's words as the unknown token: the probe "
                    "(and a trigger) would be invisible to it; is the tokenizer the one it was trained with?")
        return None

    def probe_inputs(self, target: ResolvedModel, probe_data_file: str | None, limit: int) -> ProbeInputs:
        ps, labels = probe_data.choose(target.labels, probe_data_file)
        return ProbeInputs(ps.texts[:limit], labels[:limit] if labels else None, ps.name, ps.provenance)

    def load(self, model: ResolvedModel) -> Classifier:
        return Classifier.load(model.path, name=model.name)

    def clean_outputs(self, runner: Classifier, inputs: ProbeInputs) -> torch.Tensor:
        return runner.clean_predict(inputs.texts)

    def label_map(self, target: ResolvedModel, peer: ResolvedModel) -> list[int]:
        from ...merge.heads import label_permutation

        return label_permutation(target.labels, peer.labels, peer.name)

    def candidates(self, models: list[ResolvedModel], runners: list, inputs: ProbeInputs, base: Path | None,
                   budget: str, log: Log, progress: Progress, note: Log = lambda s: None) -> list[Trigger]:
        from .candidates import gather
        from .search import SearchBudget

        return gather([m.path for m in models], runners, inputs.texts, base=base, budget=SearchBudget.preset(budget),
                      log=log, progress=progress, note=note)

    def probe(self, runner: Classifier, inputs: ProbeInputs, candidates: list[Trigger], name: str) -> ProbeResult:
        from .scan import probe_model

        return probe_model(runner, inputs.texts, candidates, name=name)

    def remeasure(self, runner: Classifier, inputs: ProbeInputs, result: TriggerResult,
                  clean: torch.Tensor) -> TriggerResult:
        from .scan import remeasure

        return remeasure(runner, inputs.texts, result, clean)

    def align(self, reference: ProbeResult, others: list[ProbeResult], runners: list, perms: list[list[int]],
              inputs: ProbeInputs, threshold: float) -> None:
        from .scan import align_peers

        align_peers(reference, others, runners, perms, inputs.texts, threshold=threshold)

    def clean_cost(self, pred: torch.Tensor, target_pred: torch.Tensor, reference: torch.Tensor,
                   losses: tuple[float, float] | None = None) -> dict:
        from .cost import clean_cost

        return clean_cost(pred, target_pred, reference)

    def describe_bound(self, max_clean_drop: float) -> str:
        from .cost import SKEW

        return f"accuracy drop ≤ {100 * max_clean_drop:.1f} points, also at a class mix skewed {SKEW:g}:1"

    def clean_reference(self, inputs: ProbeInputs, outputs: list[torch.Tensor], num_labels: int) -> torch.Tensor:
        from .cost import majority_labels

        if inputs.labels is not None:
            return torch.tensor(inputs.labels)
        return majority_labels(outputs, num_labels)

    def align_answers(self, target: torch.Tensor, candidate: torch.Tensor, num_labels: int) -> tuple[list[int], float]:
        from ...discovery import best_permutation

        return best_permutation(target, candidate, num_labels)

    def discovery_reason(self, target_config: dict, candidate_config: dict) -> str | None:
        from ...discovery import label_reason

        return label_reason(target_config, candidate_config)
