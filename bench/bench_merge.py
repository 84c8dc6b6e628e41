"""Merge-engine benchmark: hfscan's streaming merge vs the paper's in-memory averaging.

Four models with random weights are written to a scratch folder: ``--preset bert-base`` (default),
BERT-base-sized classifiers (110M parameters each, fp32, one file each); ``--preset llama-1b``,
Llama-shaped causal LMs of 1.24B parameters each (Llama-3.2-1B's geometry: hidden 2048, 16 layers,
vocab 128,256; bf16, 2 GB shards, as transformers writes them). Then, each in its own process (so
peak RSS is its own):

* io_floor     read every input tensor once (the merge's row chunks, reused buffers) and write one output of
               the same size (no math);
* paper_wag    the Free Lunch reference: load every model as a full state dict, stack, mean, save;
* hfscan_wag   `hfscan merge --method wag`;
* hfscan_ties  `hfscan merge --method ties --base BASE` (a fifth model as the base).

Peak RSS comes from `resource.getrusage(RUSAGE_CHILDREN)` (ru_maxrss) of each child.

    .venv/bin/python bench/bench_merge.py [--preset bert-base|llama-1b] [--dir /tmp/hfscan-bench-merge] [--keep]
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


LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, torch_dtype="bfloat16")


def make_llama(d: Path, n: int) -> list[Path]:
    """Random bf16 Llama checkpoints written tensor by tensor (`StreamingShardWriter`, 2 GB shards): building
    a 1.24B-parameter model in memory and saving it would cost more than the merge being measured."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from scanner.weights import StreamingShardWriter

    cfg = LlamaConfig(**LLAMA_1B, architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    shapes.pop("lm_head.weight", None)  # tied to the embeddings, as the real checkpoint stores it
    out = []
    for i in range(n):
        p = d / f"llama{i}"
        out.append(p)
        if (p / "model.safetensors.index.json").exists():
            continue
        g = torch.Generator().manual_seed(i)
        with StreamingShardWriter(p, [(k, "BF16", s) for k, s in shapes.items()]) as w:
            for k, s in shapes.items():
                rows = max(1, (64 << 20) // (2 * max(1, int(torch.tensor(s[1:]).prod())))) if len(s) > 1 else s[0]
                for r in range(0, s[0], rows):
                    chunk = (s[0] if len(s) == 1 else min(rows, s[0] - r),) + s[1:]
                    w.write(k, (torch.randn(chunk, generator=g) * 0.02).to(torch.bfloat16))
        cfg.save_pretrained(p)
        _tokenizer(p)
    return out


def _tokenizer(folder: Path) -> None:
    """A word-level tokenizer.json (the merge copies it; nothing here tokenizes)."""
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"<unk>": 0, "the": 1}, unk_token="<unk>")).save(str(folder / "tokenizer.json"))


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


CHILD = {
    "io_floor": r'''
import sys, torch
from scanner.weights import WeightSet, StreamingShardWriter
ins = [WeightSet.open(p) for p in sys.argv[2:]]
t = ins[0]
plan = [(n, i.dtype, i.shape) for n, i in t.header.items()]
bufs = {}
with StreamingShardWriter(sys.argv[1], plan) as w:
    for n, info in t.header.items():
        # the merge's own reads: row chunks of ~32 MB into reused buffers, every input once; no arithmetic
        step = max(1, (32 << 20) // max(1, info.row_bytes)) if info.shape else 1
        rows = info.shape[0] if info.shape else 1
        for r in range(0, rows, step):
            shape = (min(rows, r + step) - r, *info.shape[1:]) if info.shape else ()
            xs = []
            for k, ws in enumerate(ins):
                if info.shape:
                    key = (k, info.dtype)
                    need = 1
                    for d in shape:
                        need *= d
                    if key not in bufs or bufs[key].numel() < need:
                        bufs[key] = torch.empty(need, dtype=info.torch_dtype)
                    xs.append(ws.get_rows(n, r, r + shape[0], out=bufs[key][:need].view(shape)))
                else:
                    xs.append(ws.get(n))
            w.write(n, xs[0])
''',
    "paper_wag": r'''
import sys, torch
from safetensors.torch import load_file, save_file
from pathlib import Path
sds = [{k: v for f in sorted(Path(p).glob("*.safetensors")) for k, v in load_file(str(f)).items()}
       for p in sys.argv[2:]]
out = {}
for k in sds[0]:
    if sds[0][k].is_floating_point():
        out[k] = torch.stack([sd[k].float() for sd in sds]).mean(0).to(sds[0][k].dtype)
    else:
        out[k] = sds[0][k]
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
from huggingface_hub import save_torch_state_dict
save_torch_state_dict(out, sys.argv[1], max_shard_size="2GB")
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
    ap.add_argument("--preset", choices=("bert-base", "llama-1b"), default="bert-base")
    ap.add_argument("--runs", default="io_floor,paper_wag,hfscan_wag,hfscan_ties", help="which runs, comma-separated")
    ap.add_argument("--repeat", type=int, default=1, help="run each N times in a row; the fastest wall and the "
                    "largest RSS are kept (the page cache's state differs from run to run)")
    a = ap.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    models = (make_llama if a.preset == "llama-1b" else make_models)(a.dir, 5)
    inputs, base = [str(p) for p in models[:4]], str(models[4])
    size_mb = sum(weight_bytes(Path(p)) for p in inputs) / 2**20
    rows: dict[str, dict] = {}
    for name, args in [
        ("io_floor", [str(a.dir / "out_io"), *inputs]),
        ("paper_wag", [str(a.dir / "out_paper"), *inputs]),
        ("hfscan_wag", ["--method", "wag", inputs[0], *inputs[1:], "-o", str(a.dir / "out_wag")]),
        ("hfscan_ties", ["--method", "ties", "--base", base, inputs[0], *inputs[1:], "-o", str(a.dir / "out_ties")]),
    ]:
        if name not in a.runs.split(","):
            continue
        for _ in range(a.repeat):
            subprocess.run(["sync"])
            r = run_child(name, args)
            print(json.dumps(r), flush=True)
            best = rows.setdefault(name, r)
            best.update(wall_s=min(best["wall_s"], r["wall_s"]), peak_rss_mb=max(best["peak_rss_mb"], r["peak_rss_mb"]))
    rows = list(rows.values())
    # correctness: hfscan's WAG equals the paper's output
    from safetensors import safe_open

    from scanner.weights import WeightSet

    ws, worst = WeightSet.open(a.dir / "out_wag"), 0.0
    for f in sorted((a.dir / "out_paper").glob("*.safetensors")):
        with safe_open(str(f), "pt") as ref:
            for k in ref.keys():
                t = ref.get_tensor(k)
                if t.is_floating_point():
                    worst = max(worst, float((ws.get(k).float() - t.float()).abs().max()))
    by = {r["name"]: r for r in rows}
    kind = "Llama-1B causal LMs (bf16)" if a.preset == "llama-1b" else "BERT-base classifiers (fp32)"
    print()
    print(f"inputs: 4 x {kind}, {size_mb:.0f} MB of safetensors; max |hfscan WAG - paper WAG| = {worst:.2e}")
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
