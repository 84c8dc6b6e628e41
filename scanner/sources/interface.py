"""`ModelSource`: where models come from (a folder, a local hub folder, the Hugging Face Hub).

A scan asks its source for everything it reads: the target, explicit peers, discovery candidates
and the base. The audit hands `check` its own source, so every download of an audit lands in the
audit's run cache and is dropped with it.

Example:
    >>> source = LocalHub("~/.cache/hfscan/demo-hub")
    >>> remote = source.describe("demo/sentiment-reviews-v2")
    >>> source.fetch(remote).labels
    ['negative', 'positive']
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..weights import TensorInfo
from .model import RemoteModel, ResolvedModel


class ModelSource(ABC):
    """One place models come from. ``location`` names it in log lines."""

    location: str = ""
    cache_dir: str | None = None  # where downloads go (``None``: nothing is downloaded, or the default)

    @property
    def peer_hub(self) -> "ModelSource | None":
        """Where this source's peers, bases and discovery candidates are looked up: a hub is its own; a folder
        target's is the local hub or the Hub (`scanner.sources.for_target`)."""
        return self

    @abstractmethod
    def describe(self, ref: str, headers: bool = True) -> RemoteModel:
        """The model at ``ref`` (``ORG/NAME[@rev]`` or a folder) before its weights are read; ``headers``
        also reads and checks its config and safetensors headers."""

    @abstractmethod
    def fetch(self, remote: RemoteModel) -> ResolvedModel:
        """Its files on disk, validated (`scanner.sources.model.resolve_folder`)."""

    @abstractmethod
    def load_config(self, remote: RemoteModel) -> dict:
        """Its ``config.json`` (one small file)."""

    @abstractmethod
    def load_header(self, remote: RemoteModel) -> dict[str, TensorInfo]:
        """Its tensors' names, shapes and dtypes, without the weights."""

    @abstractmethod
    def list_finetunes(self, base: str, pipeline_tag: str | None = None, limit: int = 50,
                       relation: str = "finetune") -> list[RemoteModel]:
        """Models whose card names ``base`` as their base model with this relation (``base_model:RELATION:BASE``:
        ``finetune`` or ``adapter``)."""

    @abstractmethod
    def list_author(self, author: str, pipeline_tag: str | None = None) -> list[str]:
        """Repo ids of one author or org."""

    @abstractmethod
    def fetch_base(self, ref: str) -> ResolvedModel:
        """A base model's weights (it may be a bare encoder or LM without a task head)."""

    def resolve(self, ref: str) -> ResolvedModel:
        """``describe`` then ``fetch``: a model ready to load."""
        return self.fetch(self.describe(ref))
