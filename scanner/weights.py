"""Safe tensor I/O: safetensors headers, streaming reads, streaming sharded writes.

hfscan never unpickles weights. A model folder is readable when it holds ``model.safetensors`` or
a sharded ``model.safetensors.index.json``; folders with only pickle files (``*.bin``, ``*.pt``,
``*.pth``, ``*.ckpt``) are refused with `PickleWeightsError`.

Reads are positioned reads (``os.pread``) of one tensor, or of a range of its rows, at the
offsets the header gives. ``safetensors.safe_open`` memory-maps whole files instead, and every
page it touches stays resident (and counts toward RSS) while the handle is open; with four
models open at once that is the size of the models, which is what streaming must avoid. Writes
go through `StreamingShardWriter`, which writes each file's header first (all shapes and dtypes
are known up front) and then appends tensor bytes, whole tensors or row chunks, in order:
``safetensors.torch.save_file`` would need every tensor of a shard in memory at once. The format
is small and documented; tests check every file hfscan writes with the reference reader.

Example:
    >>> weights = WeightSet.open("path/to/model")
    >>> weights.header["classifier.weight"].shape
    (2, 384)
    >>> t = weights.get("classifier.weight")
"""

from __future__ import annotations

import json
import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from .errors import CorruptWeightsError, ModelNotFoundError, PickleWeightsError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
ADAPTER_SINGLE = "adapter_model.safetensors"  # a PEFT adapter's weights
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# The largest header a real model has is a few MB; anything beyond this is corrupt or hostile.
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header."""

    name: str
    dtype: str  # safetensors dtype code, e.g. "F32", "BF16"
    shape: tuple[int, ...]
    file: str  # file name inside the model folder
    offset: int = 0  # absolute byte offset of the tensor's data in ``file``

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("F", "BF"))

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one slice along dim 0 (the whole tensor for a scalar)."""
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else self.nbytes


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype (``torch.bfloat16`` -> ``"BF16"``)."""
    return _DTYPE_NAMES[dtype]


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str]]:
    """Parse a safetensors header without touching tensor data.

    Returns ``(tensors, metadata)`` where ``tensors`` maps names to the raw header entries
    (``dtype``, ``shape``, ``data_offsets``, and ``start``: the absolute offset of the data). Raises `CorruptWeightsError` on a truncated file,
    invalid JSON, unknown dtypes or offsets that point outside the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptWeightsError(f"{path.name}: not a safetensors file (truncated header)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CorruptWeightsError(f"{path.name}: corrupt safetensors header (declared size {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptWeightsError(f"{path.name}: corrupt safetensors header ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{path.name}: corrupt safetensors header (not an object)")
    metadata = header.pop("__metadata__", {}) or {}
    data_len = size - 8 - n
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CorruptWeightsError(f"{path.name}: corrupt entry for tensor {name!r}") from None
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise CorruptWeightsError(f"{path.name}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not _ints(start, end) or not isinstance(shape, list) or not _ints(*shape) or min(shape, default=0) < 0:
            raise CorruptWeightsError(f"{path.name}: corrupt entry for tensor {name!r} (offsets and shape must be "
                                      "non-negative integers)")
        if not (0 <= start <= end <= data_len):
            raise CorruptWeightsError(f"{path.name}: corrupt or truncated file: tensor {name!r} lies outside it")
        numel = 1
        for d in shape:
            numel *= int(d)
        if end - start != numel * torch.empty((), dtype=_DTYPES[dtype]).element_size():
            raise CorruptWeightsError(f"{path.name}: tensor {name!r} byte size does not match its shape")
        entry["start"] = 8 + n + start
    return header, metadata


def _ints(*xs) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) for x in xs)


def tensor_mismatch(target: dict[str, TensorInfo], other: dict[str, TensorInfo]) -> str | None:
    """How ``other``'s float tensors differ from ``target``'s (names, shapes), or ``None``.

    Example:
        >>> tensor_mismatch(target_ws.header, peer_ws.header)
        "has 'embeddings.word_embeddings.weight' of shape [60, 16], the target has [50, 16]"
    """
    t_float = {n: i for n, i in target.items() if i.is_float}
    for name, info in t_float.items():
        o = other.get(name)
        if o is None:
            return f"has no tensor {name!r}"
        if o.shape != info.shape:
            return f"has {name!r} of shape {list(o.shape)}, the target has {list(info.shape)}"
    extra = [n for n, i in other.items() if i.is_float and n not in t_float]
    return f"has tensor {extra[0]!r} that the target lacks" if extra else None


def refuse_pickle(folder: Path, label: str | None = None) -> None:
    """Raise `PickleWeightsError` when a folder has pickle weights and no safetensors."""
    label = label or str(folder)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    has_safe = any((folder / f).exists() for f in (SAFE_SINGLE, SAFE_INDEX, ADAPTER_SINGLE))
    if not has_safe:
        if pickles:
            raise PickleWeightsError(
                f"{label} has only pickle weights ({', '.join(pickles[:3])}); hfscan loads safetensors only "
                "because unpickling can run arbitrary code. Ask the author for a safetensors conversion."
            )
        raise ModelNotFoundError(f"{label} has no model weights (no {SAFE_SINGLE} or {SAFE_INDEX})")


class WeightSet:
    """The safetensors weights of one model folder, single file or sharded, read lazily.

    Example:
        >>> ws = WeightSet.open("models/bert-sst2")
        >>> for name, tensor in ws.iter_tensors(): ...
    """

    def __init__(self, folder: Path, header: dict[str, TensorInfo], files: list[str]):
        self.folder = folder
        self.header = header
        self.files = files
        self._handles: dict[str, int] = {}
        self._lock = threading.Lock()  # reads may come from two threads (the merge driver reads ahead)

    @classmethod
    def open(cls, folder: str | os.PathLike, label: str | None = None) -> "WeightSet":
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelNotFoundError(f"{label or folder}: no such model folder")
        refuse_pickle(folder, label)
        if (folder / SAFE_INDEX).exists():
            try:
                index = json.loads((folder / SAFE_INDEX).read_text())
                weight_map: dict[str, str] = index["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CorruptWeightsError(f"{label or folder}: corrupt {SAFE_INDEX}") from None
            files = sorted(set(weight_map.values()))
        elif not (folder / SAFE_SINGLE).exists() and (folder / ADAPTER_SINGLE).exists():
            files = [ADAPTER_SINGLE]
        else:
            files = [SAFE_SINGLE]
        header: dict[str, TensorInfo] = {}
        for fname in files:
            if "/" in fname or "\\" in fname or fname.startswith("."):
                raise CorruptWeightsError(f"{label or folder}: index names a file outside the folder: {fname!r}")
            fpath = folder / fname
            if not fpath.exists():
                raise CorruptWeightsError(f"{label or folder}: shard {fname} is missing")
            if not stat.S_ISREG(fpath.stat().st_mode):  # a FIFO would block the read, a device is no weights
                raise CorruptWeightsError(f"{label or folder}: {fname} is not a regular file")
            try:
                entries, _ = read_safetensors_header(fpath)
            except CorruptWeightsError as e:
                raise CorruptWeightsError(f"{label or folder}: {e}") from None
            for name, e in entries.items():
                header[name] = TensorInfo(name, e["dtype"], tuple(int(d) for d in e["shape"]), fname, e["start"])
        return cls(folder, header, files)

    def names(self) -> list[str]:
        return list(self.header)

    def _fd(self, fname: str) -> int:
        with self._lock:
            if fname not in self._handles:
                self._handles[fname] = os.open(self.folder / fname, os.O_RDONLY)
            return self._handles[fname]

    def _read(self, info: TensorInfo, offset: int, nbytes: int, into: memoryview | None = None):
        buf = bytearray(nbytes) if into is None else into
        view = memoryview(buf).cast("B")
        fd = self._fd(info.file)
        got = 0
        while got < nbytes:
            n = os.preadv(fd, [view[got:]], info.offset + offset + got)
            if n <= 0:
                raise CorruptWeightsError(f"{self.folder.name}/{info.file}: {info.name!r} is truncated")
            got += n
        return buf

    def get(self, name: str) -> torch.Tensor:
        """Read one whole tensor (nothing else is loaded)."""
        info = self.header[name]
        return self.get_rows(name, 0, info.shape[0] if info.shape else 1)

    def get_rows(self, name: str, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Read rows ``start:stop`` (along dim 0) of a tensor.

        With ``out`` (a contiguous tensor of the same dtype and shape) the bytes are read straight
        into it, without an intermediate buffer.
        """
        info = self.header[name]
        if out is not None and info.shape and out.dtype == info.torch_dtype and out.is_contiguous():
            stop = min(stop, info.shape[0])
            if tuple(out.shape) == (stop - start, *info.shape[1:]) and out.numel():
                self._read(info, start * info.row_bytes, (stop - start) * info.row_bytes,
                           into=memoryview(out.view(torch.uint8).reshape(-1).numpy()))
                return out
        if not info.shape:
            return torch.frombuffer(self._read(info, 0, info.nbytes), dtype=info.torch_dtype).reshape(())
        stop = min(stop, info.shape[0])
        rows = max(0, stop - start)
        shape = (rows, *info.shape[1:])
        if rows == 0 or info.nbytes == 0:
            return torch.empty(shape, dtype=info.torch_dtype)
        buf = self._read(info, start * info.row_bytes, rows * info.row_bytes)
        return torch.frombuffer(buf, dtype=info.torch_dtype).reshape(shape)

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.header:
            yield name, self.get(name)

    def close(self) -> None:
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "WeightSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _ShardPlan:
    file: str
    names: list[str]
    header_bytes: bytes


class StreamingShardWriter:
    """Write tensors into sharded safetensors files one tensor at a time.

    The full list of names, dtypes and shapes is given up front (a merge knows it from the
    target's header), so each file's header is written before its data and tensors are
    appended in order. Output is one ``model.safetensors`` when everything fits one shard,
    else ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``,
    the layout ``transformers`` writes.

    Example:
        >>> plan = [("w", "F32", (2, 2))]
        >>> with StreamingShardWriter(out_dir, plan, max_shard_bytes=2**30) as w:
        ...     w.write("w", torch.zeros(2, 2))
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        plan: Iterable[tuple[str, str, tuple[int, ...]]],
        max_shard_bytes: int = 2 * 1024**3,
        metadata: dict[str, str] | None = None,
    ):
        self.folder = Path(folder)
        self.metadata = {"format": "pt", **(metadata or {})}
        entries = list(plan)
        groups: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
        size = 0
        for e in entries:
            nbytes = TensorInfo(e[0], e[1], tuple(e[2]), "").nbytes
            if groups[-1] and size + nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(e)
            size += nbytes
        n = len(groups)
        self.shards: list[_ShardPlan] = []
        self.total_size = 0
        for i, group in enumerate(groups):
            fname = SAFE_SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            header: dict[str, object] = {"__metadata__": self.metadata}
            offset = 0
            for name, dtype, shape in group:
                nbytes = TensorInfo(name, dtype, tuple(shape), "").nbytes
                header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
            self.total_size += offset
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
            self.shards.append(_ShardPlan(fname, [g[0] for g in group], struct.pack("<Q", len(raw)) + raw))
        self._expected = {e[0]: (e[1], tuple(e[2])) for e in entries}
        self._order = [name for s in self.shards for name in s.names]
        self._pos = 0
        self._partial = 0  # bytes of the current tensor written so far (chunked writes)
        self._shard_i = -1
        self._fh = None

    def __enter__(self) -> "StreamingShardWriter":
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor, whole or as the next chunk of its rows; names come in plan order."""
        if self._pos >= len(self._order) or self._order[self._pos] != name:
            expected = self._order[self._pos] if self._pos < len(self._order) else "<end>"
            raise ValueError(f"tensor {name!r} written out of order (expected {expected!r})")
        dtype, shape = self._expected[name]
        whole = tuple(tensor.shape) == shape
        if dtype_code(tensor.dtype) != dtype or not (whole or (shape and tuple(tensor.shape[1:]) == shape[1:])):
            raise ValueError(f"tensor {name!r}: got {dtype_code(tensor.dtype)}{list(tensor.shape)}, planned {dtype}{list(shape)}")
        while self._fh is None or name not in self.shards[self._shard_i].names:
            self._next_shard()
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(memoryview(data))
        self._partial += data.nbytes
        total = TensorInfo(name, dtype, shape, "").nbytes
        if self._partial > total:
            raise ValueError(f"tensor {name!r}: more rows written than planned")
        if self._partial == total:
            self._pos += 1
            self._partial = 0

    def _next_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._shard_i += 1
        shard = self.shards[self._shard_i]
        self._fh = open(self.folder / shard.file, "wb")
        self._fh.write(shard.header_bytes)

    def __exit__(self, exc_type, *exc) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if exc_type is not None:
            return
        if self._pos != len(self._order):
            raise ValueError(f"only {self._pos} of {len(self._order)} planned tensors were written")
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {name: s.file for s in self.shards for name in s.names},
            }
            (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
