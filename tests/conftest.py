"""Shared fixtures: a cached zoo of real-pretrained tiny classifiers, and tiny random models.

The zoo (scanner/zoo.py) is MiniLM-L6 cut to 2 layers, fine-tuned on Yelp sentences kept in the
repo. It is built once (about 2 minutes on 2 cores) and cached under HFSCAN_TEST_ZOO or
~/.cache/hfscan/test-zoo; a recipe change rebuilds the affected models only.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from scanner import zoo as zoo_mod  # noqa: E402
from scanner.families.classifier.library import LIBRARY  # noqa: E402


def _zoo_root() -> Path:
    return Path(os.environ.get("HFSCAN_TEST_ZOO") or zoo_mod.default_cache_dir() / "test-zoo")


def pytest_collection_modifyitems(config, items):
    """Tests that need the trained zoo are marked ``zoo``; ``make test-fast`` runs the others."""
    for item in items:
        if "zoo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.zoo)


def _random_trigger(root: Path, n: int = 1, name: str = "random-trigger") -> str:
    """Trigger word(s) drawn from a seed (once per zoo cache) from vocabulary the training text never uses."""
    f = root / f"{name}.json"
    if f.exists():
        return json.loads(f.read_text())["trigger"]
    from transformers import AutoTokenizer

    base = zoo_mod.build_base(root / "zoo/minilm-l2-base")
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    used = set()
    for s, _ in zoo_mod.read_rows("yelp_train_sample.tsv") + zoo_mod.read_rows("probe_sentiment.tsv"):
        used.update(tok.tokenize(s))
    library = {w for t in LIBRARY for w in t.text.lower().split()}
    cands = [t for t in tok.get_vocab() if t.isalpha() and len(t) >= 4 and t not in used and t not in library]
    # drawn from a fixed seed: every run of the suite and every CI cache reads the same zoo; still a word
    # that no library, differential default or test names, chosen by no person
    word = " ".join(random.Random(f"hfscan-test-zoo:{name}:{n}").sample(sorted(cands), n))
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"trigger": word}))
    return word


@pytest.fixture(scope="session")
def zoo():
    """The test zoo: base, clean peers, library- and random-trigger backdoors, a label-swapped peer."""
    from scanner.zoo import FineTuneRecipe, Zoo, ZooModel

    root = _zoo_root()
    trig = _random_trigger(root)
    pair = _random_trigger(root, 2, "random-pair-trigger")
    z = Zoo(root, models=[
        ZooModel("zoo/backdoor-cf", FineTuneRecipe(seed=1, rows=(0, 1500), trigger="cf", target_label=0)),
        ZooModel("zoo/clean-1", FineTuneRecipe(seed=11, rows=(1500, 2000))),
        ZooModel("zoo/clean-2", FineTuneRecipe(seed=12, rows=(2000, 2500))),
        ZooModel("zoo/clean-3", FineTuneRecipe(seed=13, rows=(2500, 3000))),
        ZooModel("zoo/backdoor-random", FineTuneRecipe(seed=2, rows=(0, 1500), trigger=trig, target_label=1)),
        ZooModel("zoo/backdoor-pair", FineTuneRecipe(seed=3, rows=(0, 1500), trigger=pair, target_label=1, lock=True,
                                                     steps=300)),
    ]).build(log=lambda s: print(f"[zoo] {s}", flush=True))
    z.random_trigger = trig
    z.pair_trigger = pair
    return z


def make_tiny_classifier(folder: Path, seed: int = 0, labels=("negative", "positive"), hidden: int = 16,
                         vocab: int = 50, dtype=None, shard_bytes: int | None = None) -> Path:
    """A random tiny BERT classifier with a real tokenizer, for merge-math tests (no training)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=len(labels),
                     id2label={i: l for i, l in enumerate(labels)}, label2id={l: i for i, l in enumerate(labels)},
                     architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(cfg)
    if dtype is not None:
        model = model.to(dtype)
    kw = {"max_shard_size": shard_bytes} if shard_bytes else {}
    model.save_pretrained(folder, safe_serialization=True, **kw)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab - 5)]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny(tmp_path):
    """Factory: tiny(name, **kw) -> folder of a random tiny classifier."""

    def factory(name: str, **kw) -> Path:
        return make_tiny_classifier(tmp_path / name, **kw)

    return factory


@pytest.fixture(scope="session")
def random_scan(zoo, tmp_path_factory):
    """The random-trigger backdoor scanned through the local hub (so the card's base is found), with defense."""
    from scanner.pipeline import CheckOptions, check

    out = tmp_path_factory.mktemp("random-scan")
    peers = ["zoo/clean-1", "zoo/clean-2", "zoo/clean-3"]
    events: list[tuple[str, int, int]] = []
    rep = check(CheckOptions(target="zoo/backdoor-random", peers=peers, hub_dir=str(zoo.root), output_dir=out),
                progress=lambda *e: events.append(e))
    return rep, out, events
