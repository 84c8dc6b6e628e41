"""Merge-engine benchmark: hfscan's streaming merge vs the paper's in-memory averaging.

Four BERT-base-sized classifiers (random weights, 110M parameters each, fp32 safetensors) are
written to a scratch folder; then, each in its own process (so peak RSS is its own):

* io_floor     read every input tensor once and write one output of the same size (no math);
* paper_wag    the Free Lunch reference: load every model as a full state dict, stack, mean, save;
* hfscan_wag   `hfscan merge --method wag`;
* hfscan_ties  `hfscan merge --method ties --base BASE` (a fifth model as the base).

Peak RSS comes from `resource.getrusage(RUSAGE_CHILDREN)` (ru_maxrss) of each child.

    .venv/bin/python bench/bench_merge.py [--dir /tmp/hfscan-bench-merge] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def make_models(d: Path, n: int) -> list[Path]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out = []
    cfg = BertConfig(num_labels=2)  # bert-base-uncased geometry: 12 layers, hidden 768, vocab 30522
    for i in range(n):
        p = d / f"m{i}"
        out.append(p)
        if (p / "model.safetensors").exists():
            continue
        torch.manual_seed(i)
        m = BertForSequenceClassification(cfg)
        m.save_pretrained(p, safe_serialization=True, max_shard_size="10GB")
        (p / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
        del m
    return out


CHILD = {
    "io_floor": r'''
import sys, time
from pathlib import Path
from scanner.weights import WeightSet, StreamingShardWriter
ins = [WeightSet.open(p) for p in sys.argv[2:]]
t = ins[0]
plan = [(n, i.dtype, i.shape) for n, i in t.header.items()]
with StreamingShardWriter(sys.argv[1], plan) as w:
    for n in t.header:
        xs = [ws.get(n) for ws in ins]
        w.write(n, xs[0])
''',
    "paper_wag": r'''
import sys, torch
from safetensors.torch import load_file, save_file
from pathlib import Path
sds = [load_file(str(Path(p) / "model.safetensors")) for p in sys.argv[2:]]
out = {}
for k in sds[0]:
    if sds[0][k].is_floating_point():
        out[k] = torch.stack([sd[k] for sd in sds]).mean(0)
    else:
        out[k] = sds[0][k]
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
save_file(out, str(Path(sys.argv[1]) / "model.safetensors"), metadata={"format": "pt"})
''',
}


def run_child(name: str, args: list[str]) -> dict:
    if name in CHILD:
        cmd = [PY, "-c", CHILD[name], *args]
    else:
        cmd = [PY, "-m", "scanner.cli", "merge", *args]
    t0 = time.perf_counter()
    # each measurement in a fresh grandchild so that ru_maxrss is its own
    wrapper = (
        "import resource, subprocess, sys, json;"
        "r = subprocess.run(sys.argv[1:]);"
        "print(json.dumps({'rc': r.returncode, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    res = subprocess.run([PY, "-c", wrapper, *cmd], capture_output=True, text=True, env={**os.environ, "HFSCAN_DEBUG": "1"})
    wall = time.perf_counter() - t0
    info = json.loads(res.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-2000:]}")
    return {"name": name, "wall_s": round(wall, 2), "peak_rss_mb": round(info["maxrss_kb"] / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/hfscan-bench-merge"))
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    models = make_models(a.dir, 5)
    inputs, base = [str(p) for p in models[:4]], str(models[4])
    size_mb = sum((Path(p) / "model.safetensors").stat().st_size for p in inputs) / 2**20
    rows = []
    for name, args in [
        ("io_floor", [str(a.dir / "out_io"), *inputs]),
        ("paper_wag", [str(a.dir / "out_paper"), *inputs]),
        ("hfscan_wag", ["--method", "wag", inputs[0], *inputs[1:], "-o", str(a.dir / "out_wag")]),
        ("hfscan_ties", ["--method", "ties", "--base", base, inputs[0], *inputs[1:], "-o", str(a.dir / "out_ties")]),
    ]:
        subprocess.run(["sync"])
        rows.append(run_child(name, args))
        print(json.dumps(rows[-1]), flush=True)
    # correctness: hfscan's WAG equals the paper's output
    from safetensors import safe_open

    with safe_open(str(a.dir / "out_paper" / "model.safetensors"), "pt") as ref:
        from scanner.weights import WeightSet

        ws = WeightSet.open(a.dir / "out_wag")
        worst = max(float((ws.get(k) - ref.get_tensor(k)).abs().max()) for k in ref.keys() if ref.get_tensor(k).is_floating_point())
    by = {r["name"]: r for r in rows}
    print()
    print(f"inputs: 4 x BERT-base classifiers, {size_mb:.0f} MB of fp32 safetensors; max |hfscan WAG - paper WAG| = {worst:.2e}")
    print("| run | wall (s) | peak RSS (MB) | RSS vs paper | wall vs I/O floor |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['wall_s']} | {r['peak_rss_mb']} | {r['peak_rss_mb'] / by['paper_wag']['peak_rss_mb']:.2f}x "
              f"| {r['wall_s'] / by['io_floor']['wall_s']:.2f}x |")
    if not a.keep:
        for p in a.dir.glob("out_*"):
            shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
