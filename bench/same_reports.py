"""Scan a fixed set of models and print each report without its times, dates and paths, plus the
SHA-256 of every defended weight file: two checkouts whose outputs are equal behave the same.

Run it with one checkout's ``scanner`` on the path, then the other's, and diff the outputs::

    PYTHONPATH=/tmp/before .venv/bin/python bench/same_reports.py --root /tmp/cmp > before.json
    .venv/bin/python bench/same_reports.py --root /tmp/cmp > after.json
    diff before.json after.json && echo identical

The models are the demo hub (a ``cf`` backdoor and three clean peers, discovered) and the test zoo's
random-word and two-word backdoors with three explicit clean peers; the zoo's trigger words are drawn
from a fixed seed so both runs read the same models (built once under ``--root``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

VOLATILE = {"created_at", "duration_s", "path", "output_dir"}


def _scrub(x):
    if isinstance(x, dict):
        return {k: _scrub(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_scrub(v) for v in x]
    return x


def _weights_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(folder.glob("*.safetensors"))}


def _triggers(root: Path) -> tuple[str, str]:
    from transformers import AutoTokenizer

    from scanner import zoo
    from scanner.families.classifier.library import LIBRARY

    base = zoo.build_base(root / "zoo/minilm-l2-base")
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    used: set[str] = set()
    for s, _ in zoo.read_rows("yelp_train_sample.tsv") + zoo.read_rows("probe_sentiment.tsv"):
        used.update(tok.tokenize(s))
    library = {w for t in LIBRARY for w in t.text.lower().split()}
    cands = sorted(t for t in tok.get_vocab() if t.isalpha() and len(t) >= 4 and t not in used and t not in library)
    rng = random.Random(20261201)
    return rng.choice(cands), " ".join(rng.sample(cands, 2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True, help="where the demo hub and the zoo are built (cached)")
    args = ap.parse_args()
    from scanner import zoo
    from scanner.pipeline import CheckOptions, check

    word, pair = _triggers(args.root / "zoo")
    z = zoo.Zoo(args.root / "zoo", models=[
        zoo.ZooModel("zoo/clean-1", zoo.FineTuneRecipe(seed=11, rows=(1500, 2000))),
        zoo.ZooModel("zoo/clean-2", zoo.FineTuneRecipe(seed=12, rows=(2000, 2500))),
        zoo.ZooModel("zoo/clean-3", zoo.FineTuneRecipe(seed=13, rows=(2500, 3000))),
        zoo.ZooModel("zoo/backdoor-random", zoo.FineTuneRecipe(seed=2, rows=(0, 1500), trigger=word, target_label=1)),
        zoo.ZooModel("zoo/backdoor-pair", zoo.FineTuneRecipe(seed=3, rows=(0, 1500), trigger=pair, target_label=1,
                                                             lock=True, steps=300)),
    ]).build(log=lambda s: print(s, file=sys.stderr))
    demo = zoo.build_demo_hub(args.root / "demo-hub", log=lambda s: print(s, file=sys.stderr))
    clean = ["zoo/clean-1", "zoo/clean-2", "zoo/clean-3"]
    scans = {
        "demo": CheckOptions(target=demo["target"], hub_dir=str(args.root / "demo-hub")),
        "zoo-random": CheckOptions(target="zoo/backdoor-random", peers=clean, hub_dir=str(z.root)),
        "zoo-pair": CheckOptions(target="zoo/backdoor-pair", peers=clean, hub_dir=str(z.root), defend=False),
        "zoo-clean": CheckOptions(target="zoo/clean-1", peers=["zoo/clean-2", "zoo/clean-3", "zoo/backdoor-random"],
                                  hub_dir=str(z.root)),
    }
    out: dict = {}
    for name, opts in scans.items():
        opts.output_dir = args.root / "out" / name
        rep = check(opts)
        d = _scrub(json.loads(rep.to_json()))
        if rep.defense:
            d["defended_weights"] = _weights_digest(Path(rep.defense.output_dir))
        out[name] = d
        print(f"{name}: {rep.verdict}", file=sys.stderr)
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
