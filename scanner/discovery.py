"""Discover peers: other fine-tunes of the target's base that do the same task with the same shapes.

Cheap checks first, downloads last:

1. the base: the card's ``base_model`` (or ``--base``);
2. candidates: ``list_models(filter="base_model:finetune:BASE", pipeline_tag="text-classification")``;
3. metadata (no download): not the target, not an adapter, a merge or a quantized model,
   safetensors present, the same pipeline tag;
4. config (one small file): same architecture, ``model_type``, vocabulary size, label count and,
   where the names mean something, the same label names (order may differ);
5. safetensors headers (range reads, no weights): the same tensor names and shapes
   (`scanner.weights.tensor_mismatch`, the check the merge itself makes);
6. behaviour (download, one pass over the probe set): the label permutation that maximises
   agreement with the target's predictions; candidates below ``min_agreement`` are another task
   with the same label count (e.g. ``LABEL_0/LABEL_1`` on spam detection) and are rejected.

Survivors are ranked by trust signals (downloads, likes, age), peers from the target's own
author last, and capped at ``max_peers`` (the paper needed 3 or more). Every rejected candidate
keeps a one-line reason.

Example:
    >>> found = discover(hub, target_remote, target_clf, texts)
    >>> [p.remote.repo_id for p in found.kept], [(r.repo_id, r.reason) for r in found.rejected]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import HfscanError
from .sources.model import RemoteModel, labels_of
from .merge.heads import is_generic
from .weights import tensor_mismatch

QUANTIZED_TAGS = {"gguf", "4-bit", "8-bit", "bitsandbytes", "gptq", "awq", "quantized", "onnx"}


@dataclass
class Rejected:
    repo_id: str
    reason: str


@dataclass
class Peer:
    remote: RemoteModel
    model: object  # ResolvedModel, downloaded
    permutation: list[int]
    agreement: float


@dataclass
class Discovery:
    base: str | None
    kept: list[Peer] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    tried: str = ""
    reserve: list[RemoteModel] = field(default_factory=list)  # compatible, ranked, not yet vetted by behaviour
    vet: Callable[[int], list[Peer]] | None = field(default=None, repr=False, compare=False)

    def more(self, n: int) -> list[Peer]:
        """Up to ``n`` more peers from the reserve, vetted like the first (when vetting set peers aside)."""
        return self.vet(n) if self.vet is not None and n > 0 else []


def base_of(target: RemoteModel, override: str | None = None) -> str | None:
    if override:
        return override
    b = target.card.get("base_model")
    if isinstance(b, list):
        return b[0] if len(b) == 1 else None
    return b if isinstance(b, str) else None


def best_permutation(target_pred: torch.Tensor, cand_pred: torch.Tensor, n: int) -> tuple[list[int], float]:
    """The relabelling of the candidate that agrees most with the target: perm[i] = candidate id of target label i."""
    conf = torch.zeros(n, n)
    for a, b in zip(target_pred.tolist(), cand_pred.tolist()):
        conf[a, b] += 1
    total = max(1, len(target_pred))
    if n <= 7:
        best = max(itertools.permutations(range(n)), key=lambda p: sum(conf[i, p[i]] for i in range(n)))
    else:  # greedy on the confusion matrix, largest cells first
        best, rows, cols = [-1] * n, set(), set()
        for i, j in sorted(itertools.product(range(n), range(n)), key=lambda ij: -conf[ij]):
            if i not in rows and j not in cols:
                best[i] = j
                rows.add(i)
                cols.add(j)
    return list(best), float(sum(conf[i, best[i]] for i in range(n)) / total)


def is_adapter(remote: RemoteModel) -> bool:
    tags = {str(t).lower() for t in remote.tags}
    return "adapter_config.json" in remote.files or "peft" in tags or remote.card.get("library_name") == "peft"


def static_reason(target: RemoteModel, cand: RemoteModel) -> str | None:
    """Why a candidate cannot be a peer, from its Hub metadata alone (``None``: it may be)."""
    if cand.repo_id == target.repo_id:
        return "the target itself"
    tags = {t.lower() for t in cand.tags}
    if is_adapter(cand) != is_adapter(target):
        return ("an adapter (PEFT/LoRA), not a full fine-tune" if is_adapter(cand)
                else "a full model; the target is a LoRA adapter")
    base = cand.card.get("base_model")
    if cand.card.get("base_model_relation") == "merge" or "merge" in tags or (isinstance(base, list) and len(base) > 1):
        return "a merge of several models, not an independent fine-tune"
    if tags & QUANTIZED_TAGS or cand.card.get("base_model_relation") == "quantized":
        return "a quantized model"
    if not cand.has_safetensors:
        return "no safetensors weights" + (" (pickle only)" if cand.pickle_files else "")
    if target.pipeline_tag and cand.pipeline_tag and cand.pipeline_tag != target.pipeline_tag:
        return f"another task ({cand.pipeline_tag})"
    return None


def config_reason(t_cfg: dict, c_cfg: dict) -> str | None:
    """Why a candidate is no peer from its config: another architecture or vocabulary (any family)."""
    if not isinstance(c_cfg, dict):
        return "config.json is not a JSON object"
    ta, ca = (t_cfg.get("architectures") or ["?"])[0], (c_cfg.get("architectures") or ["?"])[0]
    if ta != ca or t_cfg.get("model_type") != c_cfg.get("model_type"):
        return f"another architecture ({ca}, {c_cfg.get('model_type')}; the target is {ta}, {t_cfg.get('model_type')})"
    if t_cfg.get("vocab_size") != c_cfg.get("vocab_size"):
        return f"another vocabulary size ({c_cfg.get('vocab_size')} vs {t_cfg.get('vocab_size')})"
    return None


def label_reason(t_cfg: dict, c_cfg: dict) -> str | None:
    """Why a classifier candidate is no peer from its labels: another count, or other names."""
    tl, cl = labels_of(t_cfg), labels_of(c_cfg)
    if len(tl) != len(cl):
        return f"{len(cl)} labels {cl}, the target has {len(tl)} {tl}"
    if not is_generic(tl) and not is_generic(cl) and sorted(x.lower() for x in tl) != sorted(x.lower() for x in cl):
        return f"other label names {cl} (the target has {tl})"
    return None


def discover(
    hub,
    target: RemoteModel,
    target_model,
    target_pred: torch.Tensor,
    inputs,
    family,
    base: str | None = None,
    max_peers: int = 3,
    min_agreement: float = 0.7,
    limit: int = 50,
    log: Callable[[str], None] = lambda s: None,
    prepare: Callable = lambda model: model,
) -> Discovery:
    """Find, check and rank homogeneous peers of ``target`` (see the module docstring).

    ``target_model`` is the target as resolved (`ResolvedModel`); ``inputs`` are the probe inputs (`scanner.families.ProbeInputs`) the behaviour check runs on, and
    ``family`` the target's `ModelFamily`; ``prepare`` readies a downloaded candidate for loading (an
    adapter gets its base). Adapters are discovered among the base's adapters (``base_model:adapter:BASE``),
    full fine-tunes among its fine-tunes. A candidate that cannot be read is rejected with its reason, never
    an error of the scan.
    """
    base = base_of(target, base)
    found = Discovery(base)
    if not base:
        raise HfscanError(f"{target.repo_id}: its card names no base_model, so peers cannot be discovered; "
                          "give --base BASE or --peer MODEL (3 or more)")
    tag = target.pipeline_tag or family.pipeline_tag
    relation = "adapter" if is_adapter(target) else "finetune"
    kind = "adapters" if relation == "adapter" else "fine-tunes"
    found.tried = f"{kind} of {base} tagged {tag}"
    cands = hub.list_finetunes(base, pipeline_tag=tag, limit=limit, relation=relation)
    log(f"discovery: {len(cands)} {kind} of {base} listed")
    survivors = _compatible(hub, target, cands, family, found, relation == "adapter")
    _other_kind(hub, base, relation, limit, {c.repo_id for c in cands} | {target.repo_id}, found)
    survivors.sort(key=lambda c: (c.author == target.author, -c.downloads, -c.likes, c.created_at or ""))
    n_labels = family.num_labels(target_model)
    found.reserve = survivors

    def vet(n: int) -> list[Peer]:
        return _vet(hub, found, n, target_pred, inputs, family, n_labels, min_agreement, prepare, log)

    found.vet = vet
    vet(max_peers)
    return found


def _vet(hub, found: Discovery, n: int, target_pred, inputs, family, n_labels: int, min_agreement: float, prepare,
         log) -> list[Peer]:
    """Take candidates from ``found.reserve`` (best ranked first) until ``n`` more behave like the target's task;
    `_settle` then gives the ones still in the reserve their reason."""
    new: list[Peer] = []
    while found.reserve and len(new) < n:
        c = found.reserve.pop(0)
        try:
            model = prepare(hub.fetch(c))
            pred = family.clean_outputs(family.load(model), inputs)
        except HfscanError as e:
            found.rejected.append(Rejected(c.repo_id, f"unreadable ({e})"))
            continue
        perm, agree = family.align_answers(target_pred, pred, n_labels)
        if agree < min_agreement:
            found.rejected.append(Rejected(c.repo_id, f"behaves like another task: best agreement with the target "
                                                      f"{agree:.2f} < {min_agreement:.2f} (labels mapped {perm})"))
            continue
        new.append(Peer(c, model, perm, agree))
        mapped = f", labels mapped {perm}" if perm != list(range(len(perm))) else ""
        log(f"discovery: peer {c.repo_id} (agreement {agree:.2f}{mapped})")
    found.kept += new
    _settle(found)
    return new


def _other_kind(hub, base: str, relation: str, limit: int, seen: set[str], found: Discovery) -> None:
    """Models of the base of the other kind (adapters for a full fine-tune, full fine-tunes for an adapter) are
    no peers; each is named with its reason, so none is silently missing from the candidates."""
    other = "finetune" if relation == "adapter" else "adapter"
    why = ("a full fine-tune; the target is a LoRA adapter" if other == "finetune"
           else "a LoRA adapter of the base; the target is a full fine-tune (adapters are compared with adapters)")
    try:
        listed = hub.list_finetunes(base, pipeline_tag=None, limit=limit, relation=other)
    except HfscanError:
        return  # the peers of the target's own kind are what discovery needs; this listing only explains
    found.rejected += [Rejected(c.repo_id, why) for c in listed if c.repo_id not in seen]


NOT_TOP = "compatible, but not needed"


def _settle(found: Discovery) -> None:
    """Every candidate still in the reserve gets its reason: enough peers ranked above it were found."""
    found.rejected = [r for r in found.rejected if not r.reason.startswith(NOT_TOP)]
    found.rejected += [Rejected(c.repo_id, f"{NOT_TOP}: {len(found.kept)} peers ranked above it by trust signals "
                                           "were found first") for c in found.reserve]


def _compatible(hub, target: RemoteModel, cands: list[RemoteModel], family, found: Discovery,
                adapters: bool = False) -> list[RemoteModel]:
    """The candidates that pass the metadata, config and header checks; the others join ``found.rejected``.
    (Adapters have no config of their own: their tensors' names and shapes are the check.)"""
    t_cfg = {} if adapters else hub.load_config(target)
    t_header = hub.load_header(target)
    survivors: list[RemoteModel] = []
    for c in cands:
        try:
            reason = static_reason(target, c)
            if reason is None and not adapters:
                c_cfg = hub.load_config(c)
                reason = config_reason(t_cfg, c_cfg) or family.discovery_reason(t_cfg, c_cfg)
            if reason is None:
                reason = tensor_mismatch(t_header, hub.load_header(c))
        except HfscanError as e:
            reason = f"unreadable ({e})"
        except Exception as e:  # a candidate's broken metadata is its problem, not the scan's
            reason = f"unreadable ({e.__class__.__name__})"
        if reason:
            found.rejected.append(Rejected(c.repo_id, reason))
        else:
            survivors.append(c)
    return survivors
