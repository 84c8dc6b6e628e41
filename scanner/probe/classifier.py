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


def probe_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision that triggered inputs run in, or ``None`` for float32.

    bfloat16 where the hardware multiplies it natively (a CPU with AVX512-BF16 or AMX: 2.2x faster
    per MiniLM-L6 forward pass on this project's 2 cores; a CUDA device with bf16). It serves the
    gradient search, the screening and every ASR measurement (target, peers, defense candidates,
    defended variant alike, so the comparisons stay like for like). Measured on MiniLM-L6: 99.7% of
    predictions equal to float32's (4 of 1,200 borderline inputs differ), far inside the probe's own
    sampling error (about ±4 points on an ASR over 160 inputs). Clean predictions, clean accuracy and
    the defense's clean bound stay float32. ``HFSCAN_PROBE_DTYPE=float32`` turns it off (``auto``, the
    default, or ``bfloat16`` to force it).

    Example:
        >>> os.environ["HFSCAN_PROBE_DTYPE"] = "float32"
        >>> probe_dtype(torch.device("cpu")) is None
        True
    """
    want = os.environ.get("HFSCAN_PROBE_DTYPE", "auto").strip().lower() or "auto"
    if want in ("float32", "fp32", "off"):
        return None
    if want not in ("auto", "bfloat16", "bf16"):
        raise DeviceError(f"HFSCAN_PROBE_DTYPE={want!r}: use auto, bfloat16 or float32")
    return torch.bfloat16 if native_bf16(device) or want != "auto" else None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # private helpers of torch.cpu (present since 2.1); without them, assume no native bf16
        return any(getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


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
        """Predicted label ids; repeated texts are served from a cache."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            for t, p in zip(todo, self.logits(todo).argmax(-1).tolist()):
                self._cache[t] = p
        return torch.tensor([self._cache[t] for t in texts], dtype=torch.long)
