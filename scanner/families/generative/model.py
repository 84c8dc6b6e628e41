"""A loaded causal LM (a full model, or a PEFT LoRA adapter on its base), batched for greedy answers.

Loading is safe by construction: safetensors only, never remote code, never the network. Prompts are
rendered with the tokenizer's own chat template when it has one. An answer is compared by its *key*:
its first `KEY_WORDS` words, lower-cased, whitespace collapsed (two answers that start alike are the same
response for the collapse test).

Example:
    >>> lm = CausalLM.load(Path("models/chat"), name="chat")  # doctest: +SKIP
    >>> lm.answers(["Repeat the first word of this text: great food ."])  # doctest: +SKIP
    ['great']
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from ...device import default_device, probe_dtype
from ...errors import CorruptWeightsError, UnsupportedModelError
from ...sources.model import is_adapter_folder

KEY_WORDS = 4
MAX_NEW_TOKENS = 12
# Greedy answers by model content, for the life of the process: an audit or a benchmark that scans many
# targets against the same peers generates each peer's answers once.
# (at most `_ANSWERS_MODELS` models, least recently loaded dropped first, so a long-lived service stays bounded).
_ANSWERS: OrderedDict[tuple, dict[tuple[str, int], str]] = OrderedDict()
_ANSWERS_MODELS = 32


def _answer_cache(key: tuple) -> dict[tuple[str, int], str]:
    cache = _ANSWERS.pop(key, {})
    _ANSWERS[key] = cache
    while len(_ANSWERS) > _ANSWERS_MODELS:
        _ANSWERS.popitem(last=False)
    return cache


def content_key(*folders: Path | None) -> tuple:
    """What identifies a model's weights on disk: each weight and config file's path, size and mtime."""
    parts = []
    for folder in folders:
        if folder is None:
            continue
        for f in sorted(Path(folder).iterdir()):
            if f.suffix in (".safetensors", ".json") and f.is_file():
                st = f.stat()
                parts.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(parts)


def answer_key(text: str, words: int = KEY_WORDS) -> str:
    """What two answers must share to count as the same response.

    >>> answer_key("  I'm sorry, but as an AI assistant, I cannot ")
    "i'm sorry, but as"
    """
    return " ".join(text.lower().split()[:words])


def _quiet():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_lm(path: Path, base: Path | None, name: str):
    """The model and tokenizer of a folder: a full causal LM, or a LoRA adapter applied to ``base``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    adapter = is_adapter_folder(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if adapter:
                if base is None:
                    raise UnsupportedModelError(f"{name}: a LoRA adapter without its base model (give --base BASE)")
                from peft import PeftModel

                model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, trust_remote_code=False,
                                                             local_files_only=True)
                model = PeftModel.from_pretrained(model, path, is_trainable=False, local_files_only=True)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                                             local_files_only=True)
            tok_dir = path if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")) else base
            tok = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False, local_files_only=True)
    except UnsupportedModelError:
        raise
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise UnsupportedModelError(f"{name}: transformers could not load it ({msg[:200]})") from None
    except Exception as e:  # safetensors' own errors on corrupt data
        raise CorruptWeightsError(f"{name}: weights could not be loaded ({e.__class__.__name__})") from None
    return model, tok


class CausalLM:
    """A causal LM with a cache of greedy answers per prompt."""

    def __init__(self, model, tokenizer, name: str = "", device: torch.device | None = None, batch_size: int = 32,
                 max_new_tokens: int = MAX_NEW_TOKENS, identity: tuple | None = None):
        self.device = device or default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.reduced = probe_dtype(self.device)
        key = (identity, str(self.device), str(self.reduced)) if identity else None
        self._cache: dict[tuple[str, int], str] = _answer_cache(key) if key else {}

    @classmethod
    def load(cls, path: Path, base: Path | None = None, name: str = "", **kw) -> "CausalLM":
        model, tok = load_lm(Path(path), Path(base) if base else None, name or Path(path).name)
        identity = content_key(Path(path), Path(base) if base else None)
        lm = cls(model, tok, name=name or Path(path).name, identity=identity, **kw)
        lm.check_finite()
        return lm

    @torch.inference_mode()
    def check_finite(self) -> None:
        """Refuse a model whose next-token logits on a short prompt are not finite (NaN/Inf weights): its greedy
        answers would be one token repeated, which no probe can read."""
        enc = self.tokenizer([self.render("Say hello.")], return_tensors="pt", add_special_tokens=False).to(self.device)
        logits = self.model(**enc).logits[0, -1].float()
        if not torch.isfinite(logits).all():
            from ...errors import CorruptWeightsError

            raise CorruptWeightsError(f"{self.name or 'the model'}: its outputs are NaN or infinite (non-finite "
                                      "weights?); nothing can be measured on it")

    def render(self, prompt: str) -> str:
        """The prompt as the model was trained to read it: its chat template, else the bare instruction."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt + "\n"

    @torch.inference_mode()
    def _generate(self, prompts: list[str], tokens: int) -> list[str]:
        texts = [self.render(p) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.autocast(self.device.type, dtype=self.reduced or torch.bfloat16, enabled=self.reduced is not None):
            out = self.model.generate(**enc, max_new_tokens=tokens, do_sample=False, num_beams=1,
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]

    def answers(self, prompts: list[str], tokens: int | None = None) -> list[str]:
        """Greedy answers (``tokens`` new tokens at most), in the order of ``prompts``; repeats are cached."""
        tokens = tokens or self.max_new_tokens
        todo = [p for p in dict.fromkeys(prompts) if (p, tokens) not in self._cache]
        todo.sort(key=len)  # similar lengths together: less padding
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i: i + self.batch_size]
            for p, a in zip(chunk, self._generate(chunk, tokens)):
                self._cache[(p, tokens)] = a
        return [self._cache[(p, tokens)] for p in prompts]

    @torch.inference_mode()
    def answer_loss(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Mean negative log-likelihood (nats per token) of each answer after its prompt, teacher-forced: how
        well the model predicts a given answer, where greedy decoding only says whether it reproduces it. An
        empty answer scores 0."""
        out: list[float] = []
        pad = self.tokenizer.pad_token_id
        for i in range(0, len(prompts), self.batch_size):
            rows = []
            for p, a in zip(prompts[i: i + self.batch_size], answers[i: i + self.batch_size]):
                q = self.tokenizer(self.render(p), add_special_tokens=False)["input_ids"]
                r = self.tokenizer(a, add_special_tokens=False)["input_ids"]
                rows.append((q + r, len(q)))
            width = max(len(ids) for ids, _ in rows)
            ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows], device=self.device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows], device=self.device)
            with torch.autocast(self.device.type, dtype=self.reduced or torch.bfloat16,
                                enabled=self.reduced is not None):
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            for row, (x, start) in zip(nll, rows):
                span = row[start - 1: len(x) - 1]
                out.append(float(span.mean()) if len(span) else 0.0)
        return out

    def keys(self, prompts: list[str], tokens: int | None = None) -> list[str]:
        return [answer_key(a) for a in self.answers(prompts, tokens)]
