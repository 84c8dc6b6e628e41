"""A small error hierarchy. Every `HfscanError` is a user-facing failure: the CLI prints its
message on one line and exits with code 2, never with a traceback.

Example:
    >>> raise PickleWeightsError("org/model has only pickle weights (pytorch_model.bin)")
"""

from __future__ import annotations


class HfscanError(Exception):
    """Base class: an expected failure with a one-line, actionable message."""

    exit_code = 2


class ModelNotFoundError(HfscanError):
    """The model (folder or repo) does not exist."""


class UnsafeWeightsError(HfscanError):
    """The weights are not in a format hfscan will load safely."""


class PickleWeightsError(UnsafeWeightsError):
    """Only pickle weights (*.bin, *.pt, ...) are present; hfscan never unpickles them."""


class CorruptWeightsError(HfscanError):
    """A safetensors file is truncated or its header is invalid."""


class UnsupportedModelError(HfscanError):
    """The model is not one hfscan can scan (no family takes it, remote code, an adapter without its base, ...)."""


class IncompatibleModelsError(HfscanError):
    """Models cannot be merged: tensor names, shapes or label spaces differ."""


class NoPeersError(HfscanError):
    """No homogeneous peer could be found or was given."""


class ProbeDataError(HfscanError):
    """A probe data file is missing or malformed."""


class DeviceError(HfscanError):
    """The requested device (``--device`` / ``HFSCAN_DEVICE``) does not exist on this machine."""


class OutputExistsError(HfscanError):
    """The output path exists and would be overwritten."""


class TransientHubError(HfscanError):
    """The Hub (or the network to it) failed in a way that may pass: 429, 5xx, a connection error. A retry
    later may succeed (the bot's queue retries these with back-off)."""
