"""A plain model folder as a model source: the target or a peer given as a path.

A folder lists no fine-tunes of its own: a folder target's peers given as Hub ids, its base and its
discovered peers come from ``hub`` (the local hub or the Hub; see `scanner.sources.for_target`).

Example:
    >>> src = FolderSource()
    >>> src.resolve("models/bert-sst2").name
    'bert-sst2'
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError
from ..weights import TensorInfo
from .interface import ModelSource
from .model import RemoteModel, ResolvedModel, base_folder, read_card, resolve_folder


def _missing(ref: str) -> str:
    return f"{ref}: no such model folder, and not a valid Hub model id (org/name)"


class FolderSource(ModelSource):
    location = "local folders"

    def __init__(self, hub: ModelSource | None = None):
        self.hub = hub

    @property
    def peer_hub(self) -> ModelSource | None:
        return self.hub

    def describe(self, ref: str, headers: bool = True) -> RemoteModel:
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(_missing(ref))
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        card = read_card(folder)
        remote = RemoteModel(str(folder), sha="", revision=None, files=files, card=card,
                             tags=list(card.get("tags") or []), pipeline_tag=card.get("pipeline_tag"))
        if headers:
            model = resolve_folder(folder, ref=ref)
            remote.config, remote.header, remote.sha = model.config, model.header, model.sha or ""
        return remote

    def fetch(self, remote: RemoteModel) -> ResolvedModel:
        return resolve_folder(Path(remote.repo_id), ref=remote.repo_id)

    def resolve(self, ref: str, loadable: bool = True) -> ResolvedModel:
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(_missing(ref))
        return resolve_folder(folder, ref=ref, loadable=loadable)

    def load_config(self, remote: RemoteModel) -> dict:
        if remote.config is None:
            remote.config = resolve_folder(Path(remote.repo_id), ref=remote.repo_id, loadable=False).config
        return remote.config

    def load_header(self, remote: RemoteModel) -> dict[str, TensorInfo]:
        if remote.header is None:
            remote.header = resolve_folder(Path(remote.repo_id), ref=remote.repo_id, loadable=False).header
        return remote.header

    def list_finetunes(self, base: str, pipeline_tag: str | None = None, limit: int = 50,
                       relation: str = "finetune") -> list[RemoteModel]:
        return []

    def list_author(self, author: str, pipeline_tag: str | None = None) -> list[str]:
        return []

    def fetch_base(self, ref: str) -> ResolvedModel:
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(f"base model {ref}: no such folder")
        return base_folder(folder, ref)
