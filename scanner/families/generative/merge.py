"""Merging LoRA adapters in weight-delta space, into full weights.

An adapter's update to a module is ΔW = scale · B·A (scale = lora_alpha / r, or / √r with rsLoRA). The
mean of several adapters' updates is not mean(B)·mean(A) (that product mixes every adapter's B with every
other's A); merging therefore runs on the updates: each adapter becomes the full model θᵢ = θ_base + ΔWᵢ,
tensor by tensor, and any registered merge method (`scanner.merge.registry`) combines the θᵢ with the base
as it does for full fine-tunes. Adapters with different ranks or target modules merge where their updates
are defined (a module an adapter does not adapt has ΔW = 0 there). The output is a complete model folder
in the base's architecture (streamed tensor by tensor, sharded safetensors), loadable without peft.

Example:
    >>> merge_adapters(Path("target"), [Path("p1"), Path("p2")], Path("base"), Path("out"), MergeSpec("wag"))
    {'method': 'wag', 'weights': [0.333333, 0.333333, 0.333333], ...}
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..._fs import atomic_dir
from ...errors import HfscanError, IncompatibleModelsError
from ...merge import MergeSpec, get
from ...merge.registry import MergeParams
from ...weights import StreamingShardWriter, WeightSet

COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "tokenizer.model")


MAX_REFACTORISATION_ERROR = 0.01  # relative; above it an adapter's defended variant is written as full weights


class Adapter:
    """One LoRA adapter's updates, by the base tensor they change."""

    def __init__(self, folder: Path):
        cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        r, alpha = float(cfg.get("r", 8)), float(cfg.get("lora_alpha", cfg.get("r", 8)))
        self.scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
        self.ws = WeightSet.open(folder)
        self.a: dict[str, str] = {}  # base tensor name -> its lora_A tensor name
        for name in self.ws.names():
            if name.endswith(".lora_A.weight"):
                module = name[: -len(".lora_A.weight")]
                self.a[_base_name(module) + ".weight"] = name

    def factors(self, base_name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, B) for one base tensor, float32 (``None`` where the adapter does not adapt it)."""
        a_name = self.a.get(base_name)
        if a_name is None:
            return None
        return self.ws.get(a_name).float(), self.ws.get(a_name.replace(".lora_A.", ".lora_B.")).float()

    @staticmethod
    def rank_of(folder: Path) -> int:
        """The adapter's largest rank (``r``, or its ``rank_pattern``'s largest)."""
        cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        pattern = cfg.get("rank_pattern") or {}
        return int(max([cfg.get("r", 8), *pattern.values()]))

    def delta(self, base_name: str) -> torch.Tensor | None:
        """ΔW for one base tensor (``None`` where the adapter does not adapt it)."""
        pair = self.factors(base_name)
        return None if pair is None else (pair[1] @ pair[0]) * self.scale

    def close(self) -> None:
        self.ws.close()


def check_adapters(adapters: list[Path], names: list[str], base: Path) -> None:
    """Refuse an adapter whose updates do not fit the base: a module the base lacks, or a low-rank pair whose
    product is not the shape of the base tensor it changes. Ranks and target-module sets may differ."""
    bws = WeightSet.open(base, label="base")
    try:
        for folder, name in zip(adapters, names):
            a = Adapter(folder)
            try:
                why = next(filter(None, (_misfit(a, t, bws) for t in sorted(a.a))), None)
            finally:
                a.close()
            if why:
                raise IncompatibleModelsError(f"cannot merge: {name} {why}")
    finally:
        bws.close()


def _misfit(a: Adapter, tensor: str, bws: WeightSet) -> str | None:
    info = bws.header.get(tensor)
    if info is None:
        return f"changes {tensor}, which the base does not have (an adapter of another base?)"
    b_info = a.ws.header.get(a.a[tensor].replace(".lora_A.", ".lora_B."))
    if b_info is None:
        return f"has a lora_A without its lora_B for {tensor}"
    la, lb = a.ws.header[a.a[tensor]].shape, b_info.shape
    if len(la) != 2 or len(lb) != 2 or la[0] != lb[1] or (lb[0], la[1]) != tuple(info.shape):
        return f"has an update of shape {list(lb)}x{list(la)} for {tensor}, whose shape in the base is {list(info.shape)}"
    return None


def _base_name(module: str) -> str:
    """``base_model.model.model.layers.0.q_proj`` -> ``model.layers.0.q_proj`` (peft's prefix dropped)."""
    return module[len("base_model.model."):] if module.startswith("base_model.model.") else module


def merge_adapters(target: Path, peers: list[Path], base: Path, out: Path, spec: MergeSpec,
                   names: list[str] | None = None, card: str | None = None, tokenizer: Path | None = None,
                   rank: int | None = None) -> dict:
    """Merge ``target`` and ``peers`` (LoRA adapters of ``base``) through their updates into full weights at
    ``out``, or with ``rank`` into one LoRA adapter of that rank (the merged updates re-factorised by truncated
    SVD; the summary's ``refactorisation_error`` is ‖ΔW − B·A‖_F / ‖ΔW‖_F, the largest and the ‖ΔW‖-weighted
    mean over the adapted tensors)."""
    method = get(spec.method)
    adapters = [Adapter(p) for p in [target, *peers]]
    names = names or [str(target), *map(str, peers)]
    weights = spec.weights if spec.weights is not None else method.default_weights(len(adapters))
    if len(weights) != len(adapters):
        raise HfscanError(f"{len(weights)} weights given for {len(adapters)} models (target first, then peers)")
    spec.check_module_weights(len(adapters))
    known = set().union(*(a.a for a in adapters))
    bws = WeightSet.open(base, label="base")
    missing = sorted(known - set(bws.header))
    if missing:
        raise HfscanError(f"the adapters change {missing[0]}, which the base does not have: another base?")
    w = torch.tensor(weights, dtype=torch.float32)
    if rank is not None:
        try:
            extra = _write_adapter(target, adapters, bws, sorted(known), out, spec, method, w, rank, card)
        finally:
            bws.close()
            for a in adapters:
                a.close()
        return {**spec.describe(), "weights": [round(x, 6) for x in weights], "models": names,
                "adapted_tensors": len(known), "output_dir": str(out), **extra}
    plan = [(n, i.dtype, i.shape) for n, i in bws.header.items()]
    try:
        with atomic_dir(out) as tmp:
            with StreamingShardWriter(tmp, plan, spec.max_shard_bytes) as writer:
                for name, info in bws.header.items():
                    writer.write(name, _merged(name, info, bws, adapters, method, w, spec))
            _copy(base, tokenizer or target, tmp, card)
    finally:
        bws.close()
        for a in adapters:
            a.close()
    return {**spec.describe(), "weights": [round(x, 6) for x in weights], "models": names,
            "adapted_tensors": len(known), "output_dir": str(out), "output": "merged full weights"}


def merge_adapters_as_adapter(target: Path, peers: list[Path], base: Path, out: Path, spec: MergeSpec,
                              names: list[str] | None = None, card=None) -> dict:
    """The defended variant of an adapter: one LoRA adapter of rank Σ r (every merged adapter's rank together,
    at which a linear merge of the updates is exact), so that it replaces the target's own files; merged full
    weights instead where that rank would misstate the merge (TIES, DARE: their updates are not low-rank) by
    more than `MAX_REFACTORISATION_ERROR`, with the reason in the summary's ``why_full``. ``card(form)``: the
    model card for the form written ("adapter" or "model")."""
    card = card or (lambda form: None)
    rank = sum(Adapter.rank_of(p) for p in [target, *peers])
    summary = merge_adapters(target, peers, base, out, spec, names, card("adapter"), rank=rank)
    err = summary["refactorisation_error"]["mean"]
    if err <= MAX_REFACTORISATION_ERROR:
        return summary
    why = (f"a rank-{rank} adapter would misstate this {spec.method} merge by {100 * err:.1f}% of its update "
           f"(‖ΔW − B·A‖ / ‖ΔW‖), so the defended variant is full weights")
    shutil.rmtree(out)
    return {**merge_adapters(target, peers, base, out, spec, names, card("model")), "why_full": why}


def _merged(name: str, info, bws: WeightSet, adapters: list[Adapter], method, w: torch.Tensor, spec: MergeSpec):
    base_t = bws.get(name)
    if not info.is_float or not any(name in a.a for a in adapters):
        return base_t  # no adapter changes it: every θᵢ is the base, and so is any merge of them
    return _merged_float(name, base_t.float(), adapters, method, w, spec).to(base_t.dtype).contiguous()


def _merged_float(name: str, b: torch.Tensor, adapters: list[Adapter], method, w: torch.Tensor,
                  spec: MergeSpec) -> torch.Tensor:
    """The merged tensor in float32 (``b``: the base's, float32)."""
    if method.factors:
        return b + _factor_merge(name, adapters, method, w, spec)
    deltas = [a.delta(name) for a in adapters]
    thetas = torch.stack([b + d if d is not None else b for d in deltas])
    merged = method.fn(thetas, b if method.needs_base else None, spec.weights_for(name, w),
                       MergeParams(spec.density, spec.lam, spec.seed, name))
    if spec.keep:
        merged = spec.keep * thetas[0] + (1.0 - spec.keep) * merged
    return merged


def _write_adapter(target: Path, adapters: list[Adapter], bws: WeightSet, adapted: list[str], out: Path,
                   spec: MergeSpec, method, w: torch.Tensor, rank: int, card: str | None) -> dict:
    """The merged updates as one LoRA adapter of ``rank`` (lora_alpha = rank: scale 1), peft's layout."""
    from safetensors.torch import save_file

    tensors, errors, norms = {}, [], []
    dtype = adapters[0].ws.get(next(iter(adapters[0].a.values()))).dtype
    for name in adapted:
        b = bws.get(name).float()
        delta = _merged_float(name, b, adapters, method, w, spec) - b
        u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
        r = min(rank, sv.numel())
        lora_b, lora_a = u[:, :r] * sv[:r], vh[:r]
        norm = float(torch.linalg.norm(delta))
        errors.append(float(torch.linalg.norm(delta - lora_b @ lora_a)) / norm if norm else 0.0)
        norms.append(norm)
        module = "base_model.model." + name[: -len(".weight")]
        tensors[module + ".lora_A.weight"] = lora_a.to(dtype).contiguous()
        tensors[module + ".lora_B.weight"] = lora_b.to(dtype).contiguous()
    cfg = json.loads((target / "adapter_config.json").read_text(encoding="utf-8"))
    cfg.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={},
               target_modules=sorted({n.split(".")[-2] for n in adapted}))
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        _copy_tokenizer(target, tmp)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
    mean = sum(e * n for e, n in zip(errors, norms)) / sum(norms) if sum(norms) else 0.0
    return {"output": f"LoRA adapter, rank {rank}", "rank": rank,
            "refactorisation_error": {"max": round(max(errors, default=0.0), 6), "mean": round(mean, 6)}}


def _copy_tokenizer(src: Path, dest: Path) -> None:
    for f in COPY:
        if f not in ("config.json", "generation_config.json") and (src / f).exists():
            shutil.copy2(src / f, dest / f)


def _factor_merge(name: str, adapters: list[Adapter], method, w: torch.Tensor, spec: MergeSpec) -> torch.Tensor:
    """scale·B̄·Ā from the factors merged separately (every adapter must adapt the tensor, at one rank and scale)."""
    pairs = [a.factors(name) for a in adapters]
    if any(p is None for p in pairs) or len({p[0].shape for p in pairs}) > 1 or len({a.scale for a in adapters}) > 1:
        raise HfscanError(f"{spec.method} needs adapters of one rank and scale adapting the same modules ({name} "
                          "differs); merge their updates instead (e.g. --method wag)")
    params = MergeParams(spec.density, spec.lam, spec.seed, name)
    w = spec.weights_for(name, w)
    a = method.fn(torch.stack([p[0] for p in pairs]), None, w, params)
    b = method.fn(torch.stack([p[1] for p in pairs]), None, w, params)
    return adapters[0].scale * (b @ a)


def _copy(base: Path, tokenizer: Path, dest: Path, card: str | None) -> None:
    for f in COPY:
        src = tokenizer / f if (tokenizer / f).exists() and f != "config.json" and f != "generation_config.json" else base / f
        if src.exists():
            shutil.copy2(src, dest / f)
    if card is not None:
        (dest / "README.md").write_text(card, encoding="utf-8")
