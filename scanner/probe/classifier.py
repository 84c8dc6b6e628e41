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

from ..errors import CorruptWeightsError, DeviceError, UnsupportedModelError


def default_device() -> torch.device:
    """The device models run on: ``HFSCAN_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, …) or, unset or
    ``auto``, the first CUDA device when there is one, else the CPU.

    Example:
        >>> os.environ["HFSCAN_DEVICE"] = "cpu"
        >>> default_device()
        device(type='cpu')
    """
    name = os.environ.get("HFSCAN_DEVICE", "auto").strip().lower() or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r} (--device / HFSCAN_DEVICE) is not a device: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} (--device / HFSCAN_DEVICE): this torch build sees no CUDA device")
    return dev


class Classifier:
    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 64, name: str = "",
                 device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self._cache: dict[str, int] = {}

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
            out[idx] = self.model(**self.encode([texts[j] for j in idx])).logits.float().cpu()
        return out

    def predict(self, texts: list[str]) -> torch.Tensor:
        """Predicted label ids; repeated texts are served from a cache."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            for t, p in zip(todo, self.logits(todo).argmax(-1).tolist()):
                self._cache[t] = p
        return torch.tensor([self._cache[t] for t in texts], dtype=torch.long)
