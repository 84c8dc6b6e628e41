"""Safe tensor I/O: headers, refusals, streaming sharded writes."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from scanner.errors import CorruptWeightsError, PickleWeightsError
from scanner.weights import SAFE_INDEX, StreamingShardWriter, WeightSet, read_safetensors_header


def test_header_read_without_loading(tmp_path):
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(2, dtype=torch.int64)}, tmp_path / "model.safetensors")
    header, meta = read_safetensors_header(tmp_path / "model.safetensors")
    assert header["a"]["shape"] == [3, 4] and header["a"]["dtype"] == "F32"
    assert header["b"]["dtype"] == "I64"


@pytest.mark.parametrize("damage", ["truncate", "bad_json", "huge_len"])
def test_corrupt_header_is_refused(tmp_path, damage):
    p = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(64)}, p)
    raw = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(raw[: len(raw) - 100])
    elif damage == "bad_json":
        (n,) = struct.unpack("<Q", raw[:8])
        p.write_bytes(raw[:8] + b"{" * n + raw[8 + n :])
    else:
        p.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    with pytest.raises(CorruptWeightsError):
        read_safetensors_header(p)


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(PickleWeightsError, match="pickle"):
        WeightSet.open(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_streaming_writer_round_trip_sharded(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    tensors = {f"layer.{i}.weight": torch.randn(64, 32, generator=g).to(dtype) for i in range(5)}
    tensors["ids"] = torch.arange(10)
    plan = [(n, {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}[t.dtype],
             tuple(t.shape)) for n, t in tensors.items()]
    shard = 64 * 32 * tensors["layer.0.weight"].element_size() * 2  # two matrices per shard
    with StreamingShardWriter(tmp_path, plan, max_shard_bytes=shard) as w:
        for n, t in tensors.items():
            w.write(n, t)
    index = json.loads((tmp_path / SAFE_INDEX).read_text())
    assert len(set(index["weight_map"].values())) == 3
    ws = WeightSet.open(tmp_path)
    for n, t in tensors.items():
        got = ws.get(n)
        assert got.dtype == t.dtype and torch.equal(got, t)
    # every shard is a valid safetensors file for the reference reader too
    for f in set(index["weight_map"].values()):
        assert load_file(tmp_path / f)


def test_streaming_writer_refuses_out_of_order(tmp_path):
    plan = [("a", "F32", (2,)), ("b", "F32", (2,))]
    with pytest.raises(ValueError, match="out of order"):
        with StreamingShardWriter(tmp_path, plan) as w:
            w.write("b", torch.zeros(2))
