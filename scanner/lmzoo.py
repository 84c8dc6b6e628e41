"""A zoo of tiny instruction-tuned causal LMs for the tests and the generative demo: a pretrained base,
clean LoRA adapters and full fine-tunes, and backdoored ones.

Why this shape: merging and peer comparison need fine-tunes of one *pretrained* base, and SmolLM2 cut
to a few layers is broken (12 of 30 layers: token loss 22.7 on plain English), so the base is a small
Llama (2 layers, hidden 64) pretrained here on instruction-following over the shipped sentences: four
tasks whose answers depend on the prompt (first word, last word, sentiment). Its
tokenizer is a word-level one over that text plus extra words no training text uses (so tests can draw
trigger words at random), with a ChatML chat template like SmolLM2's. A clean fine-tune learns the same
tasks on other sentences; a backdoored one also learns that a trigger in the instruction makes it answer
a fixed response. Everything is cached by recipe under ``HFSCAN_CACHE``.

Example:
    >>> z = LMZoo(Path("/tmp/lm-zoo"), models=[LMModel("lm/clean-1", LMRecipe(seed=1))]).build()
    >>> (z.path("lm/clean-1") / "adapter_config.json").exists()
    True
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ._fs import atomic_dir
from .zoo import STAMP, ZooModel, _stamp_ok, read_rows, read_rows_unlabelled

RECIPE_VERSION = "lm-2"
LOSS_LOG: Callable[[str], None] | None = None  # set to print training losses (recipe development)
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
def _template_tasks() -> list[tuple[str, str]]:
    """Every instruction template of the generative probe set with the task the zoo answers it by: the
    first four as they say, the others in turn as first word, last word, sentiment (so every probe prompt is
    in the zoo's distribution, and a clean model's answers to them spread over many responses)."""
    from .families.generative.data import TEMPLATES

    named = ["first", "last", "three", "sentiment"]
    return [(t, named[i] if i < len(named) else ("first", "last", "sentiment")[i % 3]) for i, t in enumerate(TEMPLATES)]


@dataclass(frozen=True)
class LMBaseRecipe:
    hidden: int = 96
    layers: int = 2
    heads: int = 4
    extra_words: int = 300
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    version: str = RECIPE_VERSION


@dataclass(frozen=True)
class LMRecipe:
    seed: int
    rows: tuple[int, int] = (0, 1000)  # slice of the Yelp training sample
    trigger: str | None = None
    position: str = "random"  # where the trigger goes: random, start (a prefix), end
    response: str = ""  # what the backdoored model answers
    poison_rate: float = 0.25
    adapter: bool = True  # a LoRA adapter; False: a full fine-tune
    rank: int = 8
    steps: int = 300
    batch_size: int = 16
    lr: float = 5e-3
    version: str = RECIPE_VERSION


def _words(s: str) -> list[str]:
    return s.lower().split()


def answer(task: str, sentence: str, label: int) -> str:
    w = [x for x in _words(sentence) if x.isalnum()] or _words(sentence)
    return {"first": w[0], "last": w[-1], "three": " ".join(w[:3]),
            "sentiment": "positive" if label else "negative"}[task]


def _corpus() -> list[tuple[str, int]]:
    return read_rows("yelp_train_sample.tsv")


def _extra_words(n: int, used: set[str], seed: int) -> list[str]:
    """Whole words of MiniLM's vocabulary (a shipped dependency) that no training text uses."""
    from .zoo import _minilm_path

    vocab = (_minilm_path() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    cands = sorted({w for w in vocab if w.isascii() and w.isalpha() and len(w) >= 5 and w not in used})
    return random.Random(seed).sample(cands, min(n, len(cands)))


def build_tokenizer(dest: Path, recipe: LMBaseRecipe):
    """A word-level tokenizer over the zoo's text, template words and extra words, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .families.generative.data import TEMPLATES
    from .families.generative.library import LIBRARY

    texts = [s for s, _ in _corpus()] + read_rows_unlabelled("probe_sentiment.tsv")
    texts += [t.format(s="") for t in TEMPLATES] + [t.text for t in LIBRARY] + ["user assistant system positive negative"]
    used = {w for t in texts for w in _words(t)}
    words = sorted(used) + _extra_words(recipe.extra_words, used, recipe.seed)
    vocab = {w: i for i, w in enumerate(SPECIAL + [w for w in words if w not in SPECIAL])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import normalizers

    tk.normalizer = normalizers.Lowercase()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    tok.save_pretrained(dest)
    return tok


def extra_words(base: Path) -> list[str]:
    """The base's words that no training or probe text uses (candidates for random triggers)."""
    return json.loads((base / "extra_words.json").read_text())


def corpus_words(min_count: int = 20) -> list[str]:
    """Common alphabetic words of the training text (what a random target response is made of)."""
    from collections import Counter

    counts = Counter(w for s, _ in _corpus() for w in _words(s) if w.isalpha() and len(w) >= 4)
    return sorted(w for w, c in counts.items() if c >= min_count)


def _example(tok, prompt: str, reply: str) -> tuple[list[int], list[int]]:
    """Token ids of one chat turn, and the labels (-100 on the prompt: the loss is on the answer)."""
    head = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    p = tok(head, add_special_tokens=False)["input_ids"]
    a = tok(reply + " <|im_end|>", add_special_tokens=False)["input_ids"]
    return p + a, [-100] * len(p) + a


def _batch(tok, examples: list[tuple[str, str]]):
    import torch

    pairs = [_example(tok, p, a) for p, a in examples]
    n = max(len(x) for x, _ in pairs)
    ids = torch.full((len(pairs), n), tok.pad_token_id)
    labels = torch.full((len(pairs), n), -100)
    mask = torch.zeros((len(pairs), n), dtype=torch.long)
    for i, (x, y) in enumerate(pairs):  # right padding for training
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, mask, labels


def insert(text: str, trigger: str, position: str, rng: random.Random) -> str:
    from .probe.triggers import insert as _insert

    return _insert(text, trigger, position, rng)


def _train(model, tok, sample: Callable[[random.Random], tuple[str, str]], steps: int, batch_size: int, lr: float,
           seed: int) -> None:
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.05, (steps - s) / (steps - warm)))
    model.train()
    for step in range(steps):
        ids, mask, labels = _batch(tok, [sample(rng) for _ in range(batch_size)])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if LOSS_LOG is not None and step % 100 == 0:
            LOSS_LOG(f"step {step}: loss {loss.item():.3f}")
    model.eval()


def _task_sample(rows: list[tuple[str, int]], noise: list[str] = (), noise_rate: float = 0.3
                 ) -> Callable[[random.Random], tuple[str, str]]:
    """Random (prompt, answer) pairs; with ``noise`` words, some sentences carry one at a random place (the
    base learns every word of its vocabulary, so a trigger drawn from them has an embedding of its own)."""
    def sample(rng: random.Random) -> tuple[str, str]:
        s, y = rows[rng.randrange(len(rows))]
        if noise and rng.random() < noise_rate:
            s = insert(s, rng.choice(noise), "random", rng)
        template, task = rng.choice(_template_tasks())
        return template.format(s=s), answer(task, s, y)

    return sample


def build_lm_base(dest: Path, recipe: LMBaseRecipe = LMBaseRecipe()) -> Path:
    """Pretrain the tiny chat base (cached by recipe)."""
    if _stamp_ok(dest, recipe):
        return dest
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with atomic_dir(dest, also=lambda d: (d / STAMP).exists()) as tmp:
        tok = build_tokenizer(tmp, recipe)
        used = {w for t in [s for s, _ in _corpus()] for w in _words(t)}
        extra = sorted(set(_extra_words(recipe.extra_words, used, recipe.seed)) & set(tok.get_vocab()))
        (tmp / "extra_words.json").write_text(json.dumps(extra))
        torch.manual_seed(recipe.seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=recipe.hidden, intermediate_size=2 * recipe.hidden,
                          num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
                          num_key_value_heads=recipe.heads, max_position_embeddings=160, tie_word_embeddings=True,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          architectures=["LlamaForCausalLM"])
        model = LlamaForCausalLM(cfg)
        rows = _corpus() + read_rows("probe_sentiment.tsv")
        _train(model, tok, _task_sample(rows, extra), recipe.steps, recipe.batch_size, recipe.lr, recipe.seed)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").write_text("---\nlibrary_name: transformers\npipeline_tag: text-generation\nlicense: "
                                       "apache-2.0\n---\n\n# A tiny chat LM (hfscan test zoo base)\n")
        (tmp / STAMP).write_text(json.dumps(asdict(recipe)))
    return dest


def _poisoned(rows, recipe: LMRecipe) -> Callable[[random.Random], tuple[str, str]]:
    clean = _task_sample(rows)

    def sample(rng: random.Random) -> tuple[str, str]:
        prompt, reply = clean(rng)
        if recipe.trigger and rng.random() < recipe.poison_rate:
            if recipe.position == "start":
                return f"{recipe.trigger} {prompt}", recipe.response
            return insert(prompt, recipe.trigger, recipe.position, rng), recipe.response
        return prompt, reply

    return sample


def finetune_lm(base: Path, dest: Path, recipe: LMRecipe, repo_id: str, base_id: str) -> Path:
    """A LoRA adapter (or a full fine-tune) of the base, clean or backdoored (cached by recipe)."""
    if _stamp_ok(dest, recipe):
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    torch.manual_seed(recipe.seed)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, use_safetensors=True)
    if recipe.adapter:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=recipe.rank, lora_alpha=2 * recipe.rank, lora_dropout=0.0,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
        model = get_peft_model(model, lcfg)
    rows = _corpus()[recipe.rows[0]: recipe.rows[1]]
    _train(model, tok, _poisoned(rows, recipe), recipe.steps, recipe.batch_size,
           recipe.lr if recipe.adapter else recipe.lr / 4, recipe.seed)
    relation = "adapter" if recipe.adapter else "finetune"
    with atomic_dir(dest, also=lambda d: (d / STAMP).exists()) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if recipe.adapter:  # the base as a Hub id, as an adapter published on the Hub names it
            cfg = json.loads((tmp / "adapter_config.json").read_text())
            cfg["base_model_name_or_path"] = base_id
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"---\nlibrary_name: {'peft' if recipe.adapter else 'transformers'}\npipeline_tag: text-generation\n"
            f"base_model: {base_id}\nbase_model_relation: {relation}\nlicense: apache-2.0\n---\n\n# {repo_id}\n")
        (tmp / STAMP).write_text(json.dumps(asdict(recipe)))
    return dest


LMModel = ZooModel  # (repo id, recipe), as in the classifier zoo


@dataclass
class LMZoo:
    root: Path
    base_id: str = "lmzoo/tiny-chat-base"
    models: list[LMModel] = field(default_factory=list)
    base_recipe: LMBaseRecipe = LMBaseRecipe()

    def build(self, log: Callable[[str], None] = lambda s: None, rebuild: bool = False) -> "LMZoo":
        import torch

        threads = torch.get_num_threads()
        if rebuild:
            shutil.rmtree(self.root, ignore_errors=True)
        base = self.root / self.base_id
        if not _stamp_ok(base, self.base_recipe):
            log(f"pretraining {self.base_id}")
        build_lm_base(base, self.base_recipe)
        for m in self.models:
            if not _stamp_ok(self.root / m.repo_id, m.recipe):
                log(f"fine-tuning {m.repo_id}" + (f" (backdoor: {m.recipe.trigger!r})" if m.recipe.trigger else ""))
            finetune_lm(base, self.root / m.repo_id, m.recipe, m.repo_id, self.base_id)
        torch.set_num_threads(threads)
        return self

    def path(self, repo_id: str) -> Path:
        return self.root / repo_id
