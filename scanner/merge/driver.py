"""The streaming merge driver: one tensor name at a time, from every input, into sharded output.

Peak memory is the models' copies of one tensor (plus the base's), never whole models: inputs
are read with ``safe_open`` tensor by tensor and the output is written by
`scanner.weights.StreamingShardWriter`. Math runs in float32; each tensor is written back in the
target's dtype (bf16 in, bf16 out). Non-float tensors (``position_ids``…) are copied from the
target. Tensors a base-model method cannot find in the base (the classification head) are
merged with WAG, and the card says so.

The output folder is complete or absent: it is built in a temporary sibling and renamed.

Example:
    >>> spec = MergeSpec(method="ties", base=Path("base"), density=0.5)
    >>> merge_folders(Path("target"), [Path("peer1"), Path("peer2")], Path("out"), spec)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._fs import atomic_dir
from ..errors import HfscanError, IncompatibleModelsError
from ..hub import labels_of
from ..weights import StreamingShardWriter, WeightSet, tensor_mismatch
from . import methods as _methods  # noqa: F401  (registers the methods)
from .heads import is_head_tensor, label_permutation
from .registry import MergeParams, get

COPY_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model",
    "generation_config.json",
)


@dataclass
class MergeSpec:
    """What to merge and how. ``weights`` are per model, target first (``None``: the method's default)."""

    method: str = "wag"
    base: Path | None = None
    weights: list[float] | None = None
    density: float = 0.5
    lam: float = 1.0
    seed: int = 0
    max_shard_bytes: int = 2 * 1024**3
    # Elementwise methods process large tensors in row chunks of about this many bytes per model.
    chunk_bytes: int = 32 * 1024**2
    # Explicit head permutations per peer index (0 = first peer); else derived from label names.
    head_perms: dict[int, list[int]] = field(default_factory=dict)
    # Share of the target kept after merging: keep·θ_target + (1 − keep)·merged (0: the method alone).
    # The defense uses it to pull a merge that costs too much clean accuracy back toward the target.
    keep: float = 0.0

    def describe(self) -> dict:
        m = get(self.method)
        d: dict = {"method": self.method}
        if m.needs_base:
            d["lambda"] = self.lam
        if self.method in ("ties", "dare_linear", "dare_ties"):
            d["density"] = self.density
        if self.method.startswith("dare"):
            d["seed"] = self.seed
        if self.keep:
            d["target_keep"] = self.keep
        return d


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _base_name(name: str, base_names: set[str]) -> str | None:
    """Find a fine-tune's tensor in the base: same name, or without/with the encoder prefix."""
    if name in base_names:
        return name
    head, _, rest = name.partition(".")
    if rest in base_names:
        return rest
    for b in base_names:
        if b.endswith("." + name):
            return b
    return None


def check_compatible(target: WeightSet, peers: list[WeightSet], peer_names: list[str]) -> None:
    """Refuse peers whose float tensor names or shapes differ from the target's, naming the first."""
    for ws, pname in zip(peers, peer_names):
        why = tensor_mismatch(target.header, ws.header)
        if why:
            raise IncompatibleModelsError(f"cannot merge: {pname} {why}")


def merge_folders(
    target: Path,
    peers: list[Path],
    out: Path,
    spec: MergeSpec = MergeSpec(),
    names: list[str] | None = None,
    card: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Merge ``target`` with ``peers`` into the folder ``out``; return a summary for the report.

    ``names`` are display names (target first) used in messages and the card.
    """
    method = get(spec.method)
    names = names or [str(target)] + [str(p) for p in peers]
    if not peers:
        raise HfscanError("nothing to merge: give at least one peer")
    if method.needs_base and spec.base is None:
        raise HfscanError(f"merge method {spec.method} needs a base model (--base)")
    n_models = 1 + len(peers)
    weights = spec.weights if spec.weights is not None else method.default_weights(n_models)
    if len(weights) != n_models:
        raise HfscanError(f"{len(weights)} weights given for {n_models} models (target first, then peers)")
    if not 0.0 <= spec.keep < 1.0:
        raise HfscanError(f"the target's kept share must be in [0, 1), not {spec.keep}")
    if method.name == "wag" and sum(weights) <= 0:
        raise HfscanError("WAG weights must sum to a positive number")
    w = torch.tensor(weights, dtype=torch.float32)

    t_ws = WeightSet.open(target, label=names[0])
    p_ws = [WeightSet.open(p, label=n) for p, n in zip(peers, names[1:])]
    check_compatible(t_ws, p_ws, names[1:])
    b_ws = WeightSet.open(spec.base, label=str(spec.base)) if method.needs_base else None

    t_cfg = _config(target)
    t_labels = labels_of(t_cfg)
    perms = []
    for i, (p, pname) in enumerate(zip(peers, names[1:])):
        perms.append(spec.head_perms.get(i) or label_permutation(t_labels, labels_of(_config(p)), pname))

    base_names = set(b_ws.header) if b_ws else set()
    plan = [(n, i.dtype, i.shape) for n, i in t_ws.header.items()]
    wag_fallback: list[str] = []

    with atomic_dir(out) as tmp:
        with StreamingShardWriter(tmp, plan, spec.max_shard_bytes) as writer:
            for name, info in tqdm(t_ws.header.items(), desc="merge", unit="tensor",
                                   disable=None if progress is None else not progress, leave=False):
                if not info.is_float:
                    writer.write(name, t_ws.get(name))
                    continue
                head = is_head_tensor(name, info.shape, len(t_labels))
                bname = _base_name(name, base_names) if method.needs_base else None
                if method.needs_base and (bname is None or b_ws.header[bname].shape != info.shape):
                    wag_fallback.append(name)
                fn = get("wag").fn if name in wag_fallback else method.fn
                rows = info.shape[0] if info.shape else 1
                stats: tuple = ()
                if fn is method.fn and method.stats is not None:
                    # first pass: one model's whole task vector at a time
                    b_full = b_ws.get(bname).float()
                    for i, ws in enumerate([t_ws, *p_ws]):
                        x = ws.get(name).float()
                        if i > 0 and head and perms[i - 1] != list(range(len(perms[i - 1]))):
                            x = x[perms[i - 1]]
                        stats += (method.stats(x - b_full, MergeParams(spec.density, spec.lam, spec.seed, name)),)
                        del x
                    del b_full
                step = rows
                if (method.elementwise or stats) and not head and info.nbytes > spec.chunk_bytes:
                    step = max(1, spec.chunk_bytes // max(1, info.row_bytes))
                for start in range(0, rows, step):
                    stop = min(rows, start + step)
                    tensors = torch.empty((n_models, stop - start, *info.shape[1:]) if info.shape else (n_models,),
                                          dtype=torch.float32)
                    for i, ws in enumerate([t_ws, *p_ws]):
                        if info.torch_dtype == torch.float32 and info.shape:
                            x = ws.get_rows(name, start, stop, out=tensors[i])  # read in place, no copy
                        else:
                            x = ws.get_rows(name, start, stop).float()
                            tensors[i] = x
                        if i > 0 and head and perms[i - 1] != list(range(len(perms[i - 1]))):
                            tensors[i] = x[perms[i - 1]].clone()
                    base_part = b_ws.get_rows(bname, start, stop).float() if fn is method.fn and method.needs_base else None
                    seed_name = name if step == rows else f"{name}@{start}"
                    merged = fn(tensors, base_part, w, MergeParams(spec.density, spec.lam, spec.seed, seed_name, stats))
                    if spec.keep:
                        merged = spec.keep * tensors[0] + (1.0 - spec.keep) * merged
                    writer.write(name, merged.to(info.torch_dtype).contiguous())
                    del tensors, merged, base_part
        for f in COPY_FILES:
            if (target / f).exists():
                shutil.copy2(target / f, tmp / f)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
    for ws in [t_ws, *p_ws, *([b_ws] if b_ws else [])]:
        ws.close()
    return {
        **spec.describe(),
        "weights": [round(x, 6) for x in weights],
        "models": names,
        "head_permutations": {names[i + 1]: p for i, p in enumerate(perms) if p != list(range(len(p)))},
        "wag_fallback_tensors": wag_fallback,
        "output_dir": str(out),
    }
