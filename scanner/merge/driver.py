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
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._fs import atomic_dir
from ..errors import HfscanError, IncompatibleModelsError
from ..sources.model import labels_of
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
    # Per-module weights: (regular expression, weights) pairs; a tensor whose name matches a pattern (the first
    # that does) is merged with that pattern's weights instead of ``weights``. One-hot weights switch a module
    # to one model's own (module switching, `scanner.merge.switching`).
    module_weights: tuple[tuple[str, tuple[float, ...]], ...] = ()
    label: str = ""  # a short description of ``module_weights`` for reports ("" when there are none)

    def check_module_weights(self, n_models: int) -> None:
        """Refuse ``module_weights`` entries that do not give one non-negative weight per model, some positive."""
        for pattern, ws in self.module_weights:
            if len(ws) != n_models or min(ws) < 0 or sum(ws) <= 0:
                raise HfscanError(f"module weights for {pattern!r}: {len(ws)} weights for {n_models} models "
                                  "(one per model, non-negative, some positive)")

    def weights_for(self, name: str, default: torch.Tensor) -> torch.Tensor:
        """The weights that merge tensor ``name``: a matching ``module_weights`` entry's, else ``default``."""
        for pattern, ws in self.module_weights:
            if re.search(pattern, name):
                return torch.tensor(ws, dtype=torch.float32)
        return default

    def describe(self) -> dict:
        """The method and the knobs it reads (its registry entry's ``params``)."""
        values = {"lambda": self.lam, "density": self.density, "seed": self.seed}
        d: dict = {"method": self.method, **{k: values[k] for k in get(self.method).params}}
        if self.keep:
            d["target_keep"] = self.keep
        if self.module_weights:
            d["modules"] = self.label or f"{len(self.module_weights)} per-module weight rules"
        return d


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def base_tensor_name(name: str, base_names: set[str]) -> str | None:
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


@dataclass
class _Inputs:
    """The open inputs of one merge: the models (target first), the base, the head permutations."""

    spec: MergeSpec
    models: list[WeightSet]
    base: WeightSet | None
    perms: list[list[int]]  # per peer: its head rows in the target's label order
    num_labels: int
    weights: torch.Tensor
    buffers: dict = field(default_factory=dict)  # scratch reused across chunks (see `buffer`)

    def buffer(self, key: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """A scratch tensor of ``shape``, reused from chunk to chunk: a fresh multi-MB allocation per chunk is
        mapped and page-faulted anew each time, which cost more than the merge arithmetic (bench_merge)."""
        numel = 1
        for d in shape:
            numel *= d
        buf = self.buffers.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = self.buffers[key] = torch.empty(numel, dtype=dtype)
        return buf[:numel].view(shape)

    def permute(self, i: int, x: torch.Tensor, head: bool) -> torch.Tensor:
        """Model ``i``'s head rows in the target's label order (``i`` 0 is the target)."""
        if i == 0 or not head or self.perms[i - 1] == list(range(len(self.perms[i - 1]))):
            return x
        return x[self.perms[i - 1]]


def _weights(spec: MergeSpec, method, n_models: int, peers: list[Path]) -> list[float]:
    """The per-model weights, checked against what the method can take."""
    if not peers:
        raise HfscanError("nothing to merge: give at least one peer")
    if method.factors:
        raise HfscanError(f"{spec.method} merges the factors of LoRA adapters; these are full models")
    if method.needs_base and spec.base is None:
        raise HfscanError(f"merge method {spec.method} needs a base model (--base)")
    weights = spec.weights if spec.weights is not None else method.default_weights(n_models)
    if len(weights) != n_models:
        raise HfscanError(f"{len(weights)} weights given for {n_models} models (target first, then peers)")
    if not 0.0 <= spec.keep < 1.0:
        raise HfscanError(f"the target's kept share must be in [0, 1), not {spec.keep}")
    if method.name == "wag" and sum(weights) <= 0:
        raise HfscanError("WAG weights must sum to a positive number")
    spec.check_module_weights(n_models)
    return list(weights)


def _open(target: Path, peers: list[Path], spec: MergeSpec, names: list[str], weights: list[float]) -> _Inputs:
    method = get(spec.method)
    t_ws = WeightSet.open(target, label=names[0])
    p_ws = [WeightSet.open(p, label=n) for p, n in zip(peers, names[1:])]
    check_compatible(t_ws, p_ws, names[1:])
    b_ws = WeightSet.open(spec.base, label=str(spec.base)) if method.needs_base else None
    t_labels = labels_of(_config(target))
    perms = [spec.head_perms.get(i) or label_permutation(t_labels, labels_of(_config(p)), pname)
             for i, (p, pname) in enumerate(zip(peers, names[1:]))]
    return _Inputs(spec, [t_ws, *p_ws], b_ws, perms, len(t_labels), torch.tensor(weights, dtype=torch.float32))


def _row_step(spec: MergeSpec, info) -> int:
    """Rows per chunk for a tensor read in chunks of about ``spec.chunk_bytes`` per model."""
    return max(1, spec.chunk_bytes // max(1, info.row_bytes))


def _stats(inp: _Inputs, method, name: str, bname: str, head: bool) -> tuple:
    """A method's first pass (TIES's trim threshold): one model's whole task vector at a time, or, for a tensor
    over the chunk size and a method with ``stream_stats``, in row chunks (memory: one chunk per read)."""
    spec = inp.spec
    params = MergeParams(spec.density, spec.lam, spec.seed, name)
    info = inp.models[0].header[name]
    if method.stream_stats is not None and not head and info.shape and info.nbytes > spec.chunk_bytes:
        step = _row_step(spec, info)
        rows = info.shape[0]

        def chunks(ws):
            for start in range(0, rows, step):
                stop = min(rows, start + step)
                yield ws.get_rows(name, start, stop).float() - inp.base.get_rows(bname, start, stop).float()

        return tuple(method.stream_stats(lambda ws=ws: chunks(ws), info.nbytes // info.itemsize, params)
                     for ws in inp.models)
    b_full = inp.base.get(bname).float()
    out: tuple = ()
    for i, ws in enumerate(inp.models):
        x = inp.permute(i, ws.get(name).float(), head)
        out += (method.stats(x - b_full, params),)
    return out


def _rows(inp: _Inputs, info, start: int, stop: int, head: bool, slot: int) -> torch.Tensor:
    """Every model's rows ``start:stop`` of one tensor, stacked in float32 (target first), in scratch ``slot``."""
    shape = (stop - start, *info.shape[1:]) if info.shape else ()
    tensors = inp.buffer(f"rows{slot}", (len(inp.models), *shape), torch.float32)
    for i, ws in enumerate(inp.models):
        if info.torch_dtype == torch.float32 and info.shape:
            ws.get_rows(info.name, start, stop, out=tensors[i])  # read in place, no copy
        elif info.shape:
            tensors[i].copy_(ws.get_rows(info.name, start, stop, out=inp.buffer("raw", shape, info.torch_dtype)))
        else:
            tensors[i] = ws.get_rows(info.name, start, stop).float()
        if i > 0 and head:
            tensors[i] = inp.permute(i, tensors[i], head).clone()
    return tensors


@dataclass
class _Step:
    """One chunk of one tensor: what to read, and how it is merged."""

    info: object  # TensorInfo
    start: int = 0
    stop: int = 0
    head: bool = False
    bname: str | None = None  # the base's tensor to read beside it (None: no base read)
    fallback: bool = False  # merged with WAG (a base-model method whose base lacks the tensor)
    whole: bool = True  # the chunk is the whole tensor
    first: bool = True  # the tensor's first chunk


def _steps(inp: _Inputs, method, base_names: set[str]):
    """Every tensor of the target in header order, float tensors cut into row chunks where the method allows."""
    spec = inp.spec
    for name, info in inp.models[0].header.items():
        if not info.is_float:
            yield _Step(info)
            continue
        head = is_head_tensor(name, info.shape, inp.num_labels)
        bname = base_tensor_name(name, base_names) if method.needs_base else None
        fallback = method.needs_base and (bname is None or inp.base.header[bname].shape != info.shape)
        rows = info.shape[0] if info.shape else 1
        step = rows
        if (method.elementwise or (method.stats and not fallback)) and not head and info.nbytes > spec.chunk_bytes:
            step = _row_step(spec, info)
        for start in range(0, rows, step):
            yield _Step(info, start, min(rows, start + step), head, None if fallback else bname, fallback,
                        step == rows, start == 0)


def _read_step(inp: _Inputs, st: _Step, slot: int):
    """The inputs of one step (run one step ahead, in the reader thread): the models' rows and the base's."""
    if not st.info.is_float:
        return inp.models[0].get(st.info.name), None
    base_part = inp.base.get_rows(st.bname, st.start, st.stop).float() if st.bname is not None else None
    return _rows(inp, st.info, st.start, st.stop, st.head, slot), base_part


def _merge_step(inp: _Inputs, method, st: _Step, data, stats: tuple) -> torch.Tensor:
    """One chunk merged, in the output dtype."""
    tensors, base_part = data
    if not st.info.is_float:
        return tensors
    spec, name = inp.spec, st.info.name
    fn = get("wag").fn if st.fallback else method.fn
    seed_name = name if st.whole else f"{name}@{st.start}"
    merged = fn(tensors, base_part, spec.weights_for(name, inp.weights),
                MergeParams(spec.density, spec.lam, spec.seed, seed_name, stats))
    if spec.keep:
        merged = spec.keep * tensors[0] + (1.0 - spec.keep) * merged
    return merged.to(st.info.torch_dtype).contiguous()


def _merge_all(inp: _Inputs, method, base_names: set[str], writer, progress: bool | None) -> list[str]:
    """Merge every tensor into ``writer``; returns the tensors that fell back to WAG.

    Reads run one step ahead in a second thread (preads and the float32 conversion release the GIL), so
    the disk and the arithmetic overlap: at 1B parameters in bf16 the arithmetic alone is about the time
    of the reads (bench_merge). Two scratch slots alternate between the reader and the merge.
    """
    from concurrent.futures import ThreadPoolExecutor

    steps = list(_steps(inp, method, base_names))
    fallback: list[str] = []
    stats: tuple = ()
    bar = tqdm(total=len(inp.models[0].header), desc="merge", unit="tensor",
               disable=None if progress is None else not progress, leave=False)
    with ThreadPoolExecutor(1, thread_name_prefix="hfscan-read") as reader, bar:
        ahead = reader.submit(_read_step, inp, steps[0], 0) if steps else None
        for i, st in enumerate(steps):
            data = ahead.result()
            if i + 1 < len(steps):
                ahead = reader.submit(_read_step, inp, steps[i + 1], (i + 1) % 2)
            if st.first and st.info.is_float:
                if st.fallback:
                    fallback.append(st.info.name)
                stats = (_stats(inp, method, st.info.name, st.bname, st.head)
                         if not st.fallback and method.stats is not None else ())
            writer.write(st.info.name, _merge_step(inp, method, st, data, stats))
            if st.stop >= (st.info.shape[0] if st.info.shape else 1) or not st.info.is_float:
                bar.update(1)
    return fallback


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
    weights = _weights(spec, method, 1 + len(peers), peers)
    inp = _open(target, peers, spec, names, weights)
    t_ws = inp.models[0]
    base_names = set(inp.base.header) if inp.base else set()
    plan = [(n, i.dtype, i.shape) for n, i in t_ws.header.items()]
    try:
        with atomic_dir(out) as tmp:
            with StreamingShardWriter(tmp, plan, spec.max_shard_bytes) as writer:
                wag_fallback = _merge_all(inp, method, base_names, writer, progress)
            _copy_files(target, tmp, card)
    finally:
        for ws in [*inp.models, *([inp.base] if inp.base else [])]:
            ws.close()
    return {
        **spec.describe(),
        "weights": [round(x, 6) for x in weights],
        "models": names,
        "head_permutations": {names[i + 1]: p for i, p in enumerate(inp.perms) if p != list(range(len(p)))},
        "wag_fallback_tensors": wag_fallback,
        "output_dir": str(out),
    }


def _copy_files(target: Path, dest: Path, card: str | None) -> None:
    for f in COPY_FILES:
        if (target / f).exists():
            shutil.copy2(target / f, dest / f)
    if card is not None:
        (dest / "README.md").write_text(card, encoding="utf-8")
