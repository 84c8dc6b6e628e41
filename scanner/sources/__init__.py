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
from .folder import FolderSource
from .hf_hub import HfHub, with_retries
from .interface import ModelSource
from .local_hub import LocalHub
from .model import RemoteModel, ResolvedModel, labels_of, read_card, resolve_folder

__all__ = ["FolderSource", "HfHub", "LocalHub", "ModelSource", "RemoteModel", "ResolvedModel", "for_target", "hub_source",
           "is_folder", "labels_of", "looks_like_repo_id", "read_card", "resolve", "resolve_folder", "resolve_ref",
           "with_retries"]


def looks_like_repo_id(ref: str) -> bool:
    """A Hub model id by the Hub's rules: ``name``, ``org/name``, optionally ``@rev``; paths (``/x``, ``./x``,
    ``~/x``, ``a/b/c``, ``x.safetensors``) are not."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    name = ref.partition("@")[0]
    if not name or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_folder(ref: str) -> bool:
    return Path(ref).expanduser().is_dir() or not looks_like_repo_id(ref)


def hub_source(hub_dir: str | os.PathLike | None = None, cache_dir: str | None = None) -> ModelSource:
    """The local hub when one is named (``--hub-dir`` or ``HFSCAN_HUB_DIR``), else the Hub."""
    local = config.hub_dir(hub_dir)
    return LocalHub(local) if local else HfHub(cache_dir=cache_dir)


def for_target(target: str, hub_dir: str | os.PathLike | None = None, cache_dir: str | None = None) -> ModelSource:
    """The source a scan of ``target`` reads from: its hub, or for a folder a `FolderSource` whose peers, base
    and discovery come from the local hub or the Hub."""
    if is_folder(target):
        return FolderSource(hub=hub_source(hub_dir, cache_dir))
    return hub_source(hub_dir, cache_dir)


def resolve_ref(ref: str, source: ModelSource, hub_dir: str | os.PathLike | None = None) -> ResolvedModel:
    """A folder path, or a Hub id on ``source``'s hub (for a folder target: the local hub, else the Hub)."""
    if is_folder(ref):
        return FolderSource().resolve(ref)
    return (source.peer_hub or hub_source(hub_dir)).resolve(ref)


def resolve(ref: str, hub_dir: str | os.PathLike | None = None, loadable: bool = True) -> ResolvedModel:
    """A folder path, or a Hub id in the local hub (``--hub-dir``) or on the Hub (``merge``, tests)."""
    if Path(ref).expanduser().is_dir() or not looks_like_repo_id(ref):
        return FolderSource().resolve(ref, loadable=loadable)
    local = config.hub_dir(hub_dir)
    if local:
        return LocalHub(local).resolve(ref, loadable=loadable)
    return HfHub().resolve(ref)
