"""Model families behind one seam (`ModelFamily`); `FAMILIES` is the only list of them.

Example:
    >>> family_for({"architectures": ["RobertaForSequenceClassification"]}).name
    'classifier'
"""

from __future__ import annotations

from .classifier import ClassifierFamily
from .generative import GenerativeFamily
from .interface import ModelFamily, ProbeInputs, family_for

FAMILIES: tuple[ModelFamily, ...] = (ClassifierFamily(), GenerativeFamily())

__all__ = ["FAMILIES", "ModelFamily", "ProbeInputs", "family_for"]
