"""Probe: find triggers and measure attack success rate (ASR) and clean behaviour."""

from .triggers import BLIND_SPOTS, LIBRARY, POSITIONS, Trigger, insert

__all__ = ["BLIND_SPOTS", "LIBRARY", "POSITIONS", "Trigger", "insert"]
