"""Attacks built to survive merging, on the MiniLM benchmark: a backdoored fine-tune whose task vector is
scaled before release (Merge Hijacking's recipe, applied to the whole task vector: θ = base + s·(θ_bd − base)),
beside the same victim unscaled.

For each scale it measures the victim's attack ASR and clean accuracy, the plain WAG merge with the three clean
peers (what averaging alone does to a scaled backdoor), and `hfscan check` with defense: verdict, whether the
trigger is named, the defended model's ASR and clean accuracy, and the task-vector norm of the victim against
the peers' (a scaled vector stands out by its norm, whatever its trigger).

It reuses the models `bench_minilm.py` trained (its cache, ``HFSCAN_BENCH_CACHE``) and trains nothing:

    HFSCAN_BENCH_CACHE=~/.cache/hfscan/bench-minilm-cpu-s19 python bench/bench_adaptive.py --scales 1,2,3 \\
        --out bench/results/minilm-adaptive

Results: ``OUT/results.jsonl`` (one row per scale) and ``OUT/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_minilm as bm  # noqa: E402


def task_vector_norm(model: Path, base: Path) -> float:
    """‖θ − θ_base‖ over the tensors both share (the head, absent from the base, is left out)."""
    from safetensors.torch import load_file

    m, b = load_file(str(model / "model.safetensors")), load_file(str(base / "model.safetensors"))
    names = _shared(m, b)
    return float(sum(float(((m[k].float() - b[names[k]].float()) ** 2).sum()) for k in names) ** 0.5)


def _shared(m: dict, b: dict) -> dict[str, str]:
    """Model tensor name -> base tensor name, matched by suffix and shape (``bert.`` prefixes differ)."""
    out = {}
    for k, v in m.items():
        for cand in (k, k.removeprefix("bert."), "bert." + k):
            if cand in b and b[cand].shape == v.shape and v.is_floating_point():
                out[k] = cand
                break
    return out


def scaled(victim: Path, base: Path, s: float, dest: Path) -> Path:
    """A copy of ``victim`` with its task vector scaled by ``s`` (the head, which has no base, kept)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(victim, dest)
    m, b = load_file(str(victim / "model.safetensors")), load_file(str(base / "model.safetensors"))
    names = _shared(m, b)
    out = {k: (b[names[k]].float() + s * (v.float() - b[names[k]].float())).to(v.dtype) if k in names else v
           for k, v in m.items()}
    save_file({k: v.contiguous() for k, v in out.items()}, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def one(name: str, s: float, base: Path, tmp: Path, budget: str) -> dict:
    from scanner.merge import MergeSpec, merge_folders
    from scanner.pipeline import CheckOptions, check

    m = bm.BY_NAME[name]
    ptexts = bm.poison_test(m, base)
    clean_texts, clean_y = bm._clean(m.task)
    peers = [bm.CACHE / p for p in bm.detection_peers(name)]
    victim = scaled(bm.CACHE / name, base, s, tmp / f"{name}-x{s:g}")

    def measure(folder: Path) -> dict:
        return {"asr": bm.evaluate(folder, ptexts, m.target), "clean": bm.evaluate(folder, clean_texts, labels=clean_y)}

    row = {"model": name, "scale": s, "victim": measure(victim), "n_poison": len(ptexts), "n_clean": len(clean_texts),
           "tv_norm": round(task_vector_norm(victim, base), 2),
           "peer_tv_norms": [round(task_vector_norm(p, base), 2) for p in peers]}
    merge_folders(victim, peers, tmp / "wag3", MergeSpec("wag"), progress=False)
    row["wag3"] = measure(tmp / "wag3")
    shutil.rmtree(tmp / "wag3")
    t0 = time.time()
    rep = check(CheckOptions(target=str(victim), peers=[str(p) for p in peers], base=str(base),
                             output_dir=tmp / "check", discover=False, max_probe=300, search_budget=budget))
    row.update(verdict=rep.verdict, findings=[f.trigger for f in rep.findings][:5],
               top=[c["trigger"] for c in rep.probe.top][:5], check_seconds=round(time.time() - t0, 1),
               defense=rep.defense.method if rep.defense else None,
               defended=measure(Path(rep.defense.output_dir)) if rep.defense else None,
               recovered=bm.recovered(m, bm.trigger_of(m, base), rep.probe.top),
               weight_notes=rep.probe.weight_notes)
    shutil.rmtree(tmp / "check")
    shutil.rmtree(victim)
    return row


def summary(rows: list[dict]) -> str:
    lines = ["| victim | scale | attack ASR | clean acc | ‖τ‖ / peers' median | WAG3 ASR | verdict | trigger named | "
             "hfscan defended ASR | clean acc after |", "|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        peers = sorted(r["peer_tv_norms"])[len(r["peer_tv_norms"]) // 2]
        d = r["defended"] or {}
        lines.append(f"| {r['model']} | ×{r['scale']:g} | {100 * r['victim']['asr']:.1f}% | "
                     f"{100 * r['victim']['clean']:.1f}% | {r['tv_norm'] / peers:.2f} | {100 * r['wag3']['asr']:.1f}% | "
                     f"{r['verdict']} | {'yes' if r['recovered'].get('top5_exact') else 'no'} | "
                     f"{100 * d.get('asr', float('nan')):.1f}% | {100 * d.get('clean', float('nan')):.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sst2-badnet")
    ap.add_argument("--scales", default="1,2,3")
    ap.add_argument("--search-budget", default="small", choices=["small", "default", "large"])
    ap.add_argument("--out", type=Path, default=Path("bench/results/minilm-adaptive"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    base = bm.CACHE / "base"
    rows = []
    with tempfile.TemporaryDirectory(dir=bm.CACHE) as tmp:
        for s in [float(x) for x in a.scales.split(",")]:
            row = one(a.model, s, base, Path(tmp), a.search_budget)
            print(json.dumps(row), flush=True)
            with open(a.out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    (a.out / "summary.md").write_text(summary(rows))
    print(summary(rows), end="")


if __name__ == "__main__":
    main()
