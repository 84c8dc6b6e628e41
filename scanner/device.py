"""Where models run, and in which precision triggered inputs run (every family uses these)."""

from __future__ import annotations

import torch

from . import config
from .errors import DeviceError


def default_device() -> torch.device:
    """The device models run on: ``HFSCAN_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, …) or, unset or
    ``auto``, the first CUDA device when there is one, else the CPU.

    Example:
        >>> config.use_device("cpu")
        >>> default_device()
        device(type='cpu')
    """
    name = config.device_name()
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

    bfloat16 where the hardware multiplies it natively (a CPU with AVX512-BF16 or AMX; a CUDA device
    with bf16). It serves the gradient search, the screening and every ASR measurement (target, peers,
    defense candidates, defended variant alike, so the comparisons stay like for like; docs/decisions.md,
    D3, for speed and agreement with float32). Clean predictions, clean accuracy and
    the defense's clean bound stay float32. ``HFSCAN_PROBE_DTYPE=float32`` turns it off (``auto``, the
    default, or ``bfloat16`` to force it).

    Example:
        >>> probe_dtype(torch.device("cpu")) in (None, torch.bfloat16)
        True
    """
    want = config.probe_dtype_name()
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
