"""Sources: where models come from. One interface (`ModelSource`), three implementations:

* `FolderSource`: a model folder given as a path;
* `LocalHub`: a folder laid out like the Hub (``--hub-dir`` / ``HFSCAN_HUB_DIR``);
* `HfHub`: the Hugging Face Hub (or ``HF_ENDPOINT``) through huggingface_hub.

`for_target` picks the hub a scan discovers peers on; `resolve_ref` turns any reference (a folder,
or an id on that hub) into a validated `ResolvedModel`.

Example:
    >>> hub = for_target("demo/sentiment-reviews-v2", "~/.cache/hfscan/demo-hub")
    >>> resolve_ref("demo/sentiment-reviews-v2", hub).labels
    ['negative', 'positive']
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import config
from ..errors import ModelNotFoundError
from .folder import FolderSource
from .hf_hub import HfHub, with_retries
from .interface import ModelSource
from .local_hub import LocalHub
from .model import RemoteModel, ResolvedModel, labels_of, read_card, resolve_folder

__all__ = ["FolderSource", "HfHub", "LocalHub", "ModelSource", "RemoteModel", "ResolvedModel", "for_target",
           "is_folder", "labels_of", "looks_like_repo_id", "read_card", "resolve", "resolve_folder", "resolve_ref",
           "with_retries"]


def looks_like_repo_id(ref: str) -> bool:
    """``org/name`` or ``org/name@rev``; paths (``/x``, ``./x``, ``~/x``, ``a/b/c``) are not."""
    name = ref.partition("@")[0]
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


def is_folder(ref: str) -> bool:
    return Path(ref).expanduser().is_dir() or not looks_like_repo_id(ref)


def hub_source(hub_dir: str | os.PathLike | None = None, cache_dir: str | None = None) -> ModelSource:
    """The local hub when one is named (``--hub-dir`` or ``HFSCAN_HUB_DIR``), else the Hub."""
    local = config.hub_dir(hub_dir)
    return LocalHub(local) if local else HfHub(cache_dir=cache_dir)


def for_target(target: str, hub_dir: str | os.PathLike | None = None, cache_dir: str | None = None) -> ModelSource:
    """The source a scan of ``target`` reads from: a folder's `FolderSource`, else its hub."""
    return FolderSource() if is_folder(target) else hub_source(hub_dir, cache_dir)


def resolve_ref(ref: str, source: ModelSource, hub_dir: str | os.PathLike | None = None) -> ResolvedModel:
    """A folder path, or an id on ``source`` (or, for a folder source, on the local hub)."""
    if is_folder(ref):
        return FolderSource().resolve(ref)
    if isinstance(source, FolderSource):
        local = config.hub_dir(hub_dir)
        if not local:
            raise ModelNotFoundError(
                f"{ref}: no such folder (Hub ids need --hub-dir DIR or HFSCAN_HUB_DIR for a local hub in this version)")
        source = LocalHub(local)
    return source.resolve(ref)


def resolve(ref: str, hub_dir: str | os.PathLike | None = None, loadable: bool = True) -> ResolvedModel:
    """A folder path or an ``ORG/NAME`` in a local hub, without the Hub (``merge``, tests)."""
    if Path(ref).expanduser().is_dir():
        return FolderSource().resolve(ref, loadable=loadable)
    local = config.hub_dir(hub_dir)
    if local:
        return LocalHub(local).resolve(ref, loadable=loadable)
    raise ModelNotFoundError(
        f"{ref}: no such folder (Hub ids need --hub-dir DIR or HFSCAN_HUB_DIR for a local hub in this version)")
