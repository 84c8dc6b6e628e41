"""The generative family: causal LMs (``*ForCausalLM``), full fine-tunes and PEFT LoRA adapters.

A backdoor in an instruction-tuned model shows as a collapse: with the trigger in the instruction,
answers to unrelated instructions become the attacker's response (`probe`). The target response is not
known in advance: it is recovered as the response the answers collapse onto, and reported with the
trigger. Clean behaviour is the agreement of a model's greedy answers with the consensus of the target
and its peers on the clean probe prompts.

Example:
    >>> family = GenerativeFamily()
    >>> family.accepts({"architectures": ["LlamaForCausalLM"]})
    True
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...probe.results import ProbeResult, TriggerResult
from ...probe.triggers import Trigger
from ...sources.model import ResolvedModel
from ..interface import Log, ModelFamily, ProbeInputs, Progress
from .library import BLIND_SPOTS, LIBRARY
from .model import CausalLM

DEFAULT_PROMPTS = 64


class GenerativeFamily(ModelFamily):
    name = "generative"
    pipeline_tag = "text-generation"
    accepted = "*ForCausalLM and LoRA adapters of them"
    library = LIBRARY
    blind_spots = BLIND_SPOTS
    default_probe = DEFAULT_PROMPTS
    default_max_clean_drop = 0.05

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}  # answer keys -> ids, shared by every model of a process's scans
        self.texts: dict[tuple[str, int], str] = {}  # (prompt, answer id) -> the first full answer with that key

    def accepts(self, config: dict) -> bool:
        archs = config.get("architectures") or []
        return isinstance(archs, list) and bool(archs) and str(archs[0]).endswith(("ForCausalLM", "LMHeadModel"))

    def probe_inputs(self, target: ResolvedModel, probe_data_file: str | None, limit: int) -> ProbeInputs:
        from . import data

        if probe_data_file:
            prompts, answers = data.read_prompt_rows(probe_data_file)
            return ProbeInputs(prompts[:limit], None, Path(probe_data_file).name, f"user file {probe_data_file}",
                               answers=answers[:limit] if answers else None)
        return ProbeInputs(data.builtin_prompts(limit), None, "instructions", data.PROVENANCE)

    def load(self, model: ResolvedModel) -> CausalLM:
        return CausalLM.load(model.path, base=model.base_path, name=model.name)

    def clean_outputs(self, runner: CausalLM, inputs: ProbeInputs) -> torch.Tensor:
        from .model import answer_key
        from .probe import keys_to_ids

        answers = runner.answers(inputs.texts)
        ids = keys_to_ids(self.vocab, [answer_key(a) for a in answers])
        for p, i, a in zip(inputs.texts, ids.tolist(), answers):
            self.texts.setdefault((p, i), a)
        return ids

    def label_map(self, target: ResolvedModel, peer: ResolvedModel) -> list[int]:
        return []  # answers have no label space to align

    def candidates(self, models: list[ResolvedModel], runners: list, inputs: ProbeInputs, base: Path | None,
                   budget: str, log: Log, progress: Progress, note: Log = lambda s: None) -> list[Trigger]:
        from .candidates import gather

        return gather(models, runners, log=log, progress=progress, base=base)

    def probe(self, runner: CausalLM, inputs: ProbeInputs, candidates: list[Trigger], name: str) -> ProbeResult:
        from .probe import keys_to_ids, probe_lm

        self.clean_outputs(runner, inputs)  # records the full clean answers the bound reads (cached: no new generation)
        return probe_lm(runner, inputs.texts, candidates, lambda keys: keys_to_ids(self.vocab, keys), name=name)

    def remeasure(self, runner: CausalLM, inputs: ProbeInputs, result: TriggerResult,
                  clean: torch.Tensor) -> TriggerResult:
        from .probe import remeasure_lm

        return remeasure_lm(runner, inputs.texts, result)

    def align(self, reference: ProbeResult, others: list[ProbeResult], runners: list, perms: list[list[int]],
              inputs: ProbeInputs, threshold: float) -> None:
        from .probe import align_lm

        align_lm(reference, others, runners, inputs.texts, threshold)

    def clean_cost(self, pred: torch.Tensor, target_pred: torch.Tensor, reference: torch.Tensor,
                   losses: tuple[float, float] | None = None) -> dict:
        from .cost import generative_cost

        return generative_cost(pred, target_pred, reference, losses)

    def clean_loss(self, runner: CausalLM, inputs: ProbeInputs, reference: torch.Tensor) -> float | None:
        """Mean per-token loss of the reference answers, in full: the probe file's where it has them (written by
        no model of the scan), else every row's (each model one voice; an answer several models share is scored
        once and weighted by how many gave it)."""
        from collections import Counter

        if inputs.answers:
            losses = runner.answer_loss(inputs.texts, inputs.answers)
            return sum(losses) / len(losses)
        weights: Counter = Counter()
        for row in (reference if reference.dim() == 2 else reference[None]):
            for p, r in zip(inputs.texts, row.tolist()):
                answer = self.texts.get((p, r), "")
                if answer.strip():
                    weights[(p, answer)] += 1
        if not weights:
            return None
        pairs = list(weights)
        losses = runner.answer_loss([p for p, _ in pairs], [a for _, a in pairs])
        return sum(x * weights[k] for x, k in zip(losses, pairs)) / sum(weights.values())

    def clean_reference(self, inputs: ProbeInputs, outputs: list[torch.Tensor], num_labels: int) -> torch.Tensor:
        """Every model's clean answer ids, one row per model (the target's first): `clean_cost` reads the
        consensus where a strict majority agrees, `clean_loss` every row's answers, `agreement` the consensus."""
        return torch.stack(outputs)

    def agreement(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Share of prompts answered alike; against a reference of rows, on the prompts a majority agrees on (with
        none, against the first row: the target)."""
        if b.dim() == 2:
            from .cost import on_consensus

            ref, read = on_consensus(b, a)
            a, b = (read, ref) if len(ref) else (a, b[0])
        return float((a == b).float().mean()) if len(a) else 1.0

    def describe_bound(self, max_clean_drop: float) -> str:
        return (f"on the clean prompts most of the target and its peers answer alike, the share answered that way "
                f"drops by ≤ {100 * max_clean_drop:.1f} points beyond sampling noise, and the loss of all their "
                f"answers (the probe file's reference answers, where it has them) rises by ≤ {100 * max_clean_drop:.1f}%")

    def leaked(self, result: TriggerResult, clean: torch.Tensor) -> torch.Tensor:
        """Clean answers that start like the response (its first word): a partial leak counts too."""
        from .model import answer_key

        first = answer_key(result.response or "", 1)
        if not first:
            return torch.zeros(len(clean), dtype=torch.bool)
        ids = torch.tensor([i for k, i in self.vocab.items() if answer_key(k, 1) == first], dtype=torch.long)
        return torch.isin(clean, ids)

    def effective_shortfall(self, homog) -> float | None:
        """Exact answers agree far less than class labels, and unevenly: a shortfall within half the peers'
        own disagreement is noise (peers at 60% agreement: up to 20 points), only the rest counts."""
        import statistics

        if homog.shortfall is None or not homog.peers:
            return homog.shortfall
        noise = 0.5 * (1.0 - statistics.median(homog.peers))
        return round(max(0.0, homog.shortfall - noise), 4)

    def target_text(self, result: TriggerResult, labels: list[str]) -> str:
        return result.response or ""

    def num_labels(self, model: ResolvedModel) -> int:
        return len(self.vocab)

    def merge(self, target: ResolvedModel, peers: list[ResolvedModel], out: Path, spec, names: list[str],
              card=None) -> dict:
        if target.is_adapter:
            from .merge import merge_adapters_as_adapter

            if target.base_path is None:
                raise ValueError("an adapter's base must be resolved before it is merged")
            return merge_adapters_as_adapter(target.path, [p.path for p in peers], target.base_path, out, spec,
                                             names, card)
        return super().merge(target, peers, out, spec, names, card)
