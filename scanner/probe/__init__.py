"""What every model family's probe shares: triggers and their insertion, measured results, the verdict."""

from .results import ProbeResult, TriggerResult
from .triggers import POSITIONS, Trigger, insert

__all__ = ["POSITIONS", "ProbeResult", "Trigger", "TriggerResult", "insert"]
