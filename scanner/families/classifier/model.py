"""A loaded sequence classifier, batched for probing.

Loading is safe by construction: safetensors only (``use_safetensors=True``), never remote code,
never the network (``local_files_only=True``): the folder was resolved and checked before.

Example:
    >>> clf = Classifier.load(resolved_model.path)
    >>> clf.predict(["a wonderful film", "a dull mess"])
    tensor([1, 0])
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ...device import default_device, probe_dtype
from ...errors import CorruptWeightsError, UnsupportedModelError


NO_ANSWER = -1  # the prediction for an input whose logits are NaN


class Classifier:
    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 64, name: str = "",
                 device: torch.device | str | None = None, reduced: torch.dtype | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self.reduced = reduced  # autocast dtype of this view (None: float32)
        self._cache: dict[str, int] = {}
        self._fast: Classifier | None = None

    @property
    def fast(self) -> "Classifier":
        """The same model under `probe_dtype` (itself when that is float32), with its own cache: what
        triggered inputs run through. Clean predictions use the float32 classifier."""
        if self.reduced is not None:
            return self
        if self._fast is None:
            dtype = probe_dtype(self.device)
            if dtype is None:
                self._fast = self
            else:
                self._fast = Classifier(self.model, self.tokenizer, self.max_length, self.batch_size, self.name,
                                        self.device, reduced=dtype)
        return self._fast

    def autocast(self):
        """The precision context of this view, for code that calls ``self.model`` directly."""
        return torch.autocast(self.device.type, dtype=self.reduced or torch.bfloat16, enabled=self.reduced is not None)

    @classmethod
    def load(cls, path: str | os.PathLike, name: str = "", **kw) -> "Classifier":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = Path(path)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, use_safetensors=True, trust_remote_code=False, local_files_only=True
                )
                tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        except (OSError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            raise UnsupportedModelError(f"{name or path}: transformers could not load it ({msg})") from None
        except Exception as e:  # safetensors' own errors on corrupt data
            raise CorruptWeightsError(f"{name or path}: weights could not be loaded ({e.__class__.__name__}: {e})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(model, tok, name=name or path.name, **kw)

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def unknown_share(self, texts: list[str]) -> float:
        """Share of the non-special tokens of ``texts`` that the tokenizer reads as its unknown token."""
        unk = self.tokenizer.unk_token_id
        if unk is None or not texts:
            return 0.0
        special = set(self.tokenizer.all_special_ids) - {unk}
        ids = [i for row in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
               for i in row if i not in special]
        return sum(i == unk for i in ids) / max(1, len(ids))

    def encode(self, texts: list[str]):
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return enc.to(self.device)

    @torch.inference_mode()
    def logits(self, texts: list[str]) -> torch.Tensor:
        """Logits in the order of ``texts``. Batches are formed from texts of similar length (less
        padding when lengths vary, e.g. news texts with triggers); the attention mask makes each
        row's logits independent of its batch."""
        if not texts:
            return torch.empty(0, self.num_labels)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.num_labels)
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            with self.autocast():
                out[idx] = self.model(**self.encode([texts[j] for j in idx])).logits.float().cpu()
        return out

    def predict(self, texts: list[str]) -> torch.Tensor:
        """Predicted label ids, `NO_ANSWER` where the logits are NaN (an input with a token whose embedding is
        not finite: it flips nothing); repeated texts are served from a cache."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            out = self.logits(todo)
            pred = torch.where(torch.isnan(out).any(-1), torch.full((len(todo),), NO_ANSWER), out.argmax(-1))
            for t, p in zip(todo, pred.tolist()):
                self._cache[t] = p
        return torch.tensor([self._cache[t] for t in texts], dtype=torch.long)

    def clean_predict(self, texts: list[str]) -> torch.Tensor:
        """`predict` on clean inputs, which must all have an answer: NaN there means the weights are broken."""
        pred = self.predict(texts)
        if (pred == NO_ANSWER).any():
            from ...errors import CorruptWeightsError

            raise CorruptWeightsError(f"{self.name or 'the model'}: its outputs are NaN on "
                                      f"{int((pred == NO_ANSWER).sum())} clean inputs (non-finite weights?); nothing "
                                      "can be measured on it")
        return pred
