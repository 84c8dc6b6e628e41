"""Merge: combine a suspect model with its peers, tensor by tensor (see driver.py, methods.py)."""

from . import methods  # noqa: F401  (registers the built-in methods)
from .driver import MergeSpec, merge_folders
from .registry import REGISTRY, MergeParams, get, merge_method, names

__all__ = ["MergeSpec", "merge_folders", "REGISTRY", "MergeParams", "get", "merge_method", "names"]
