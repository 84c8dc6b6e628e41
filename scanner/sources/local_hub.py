"""A folder laid out like the Hub (``ROOT/ORG/NAME/`` with config, weights, tokenizer and a card) as a
model source: what the demo builds, and what tests and air-gapped users scan.

Example:
    >>> hub = LocalHub("~/.cache/hfscan/demo-hub")
    >>> hub.resolve("demo/sentiment-reviews-v2").labels
    ['negative', 'positive']
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ModelNotFoundError, UnsupportedModelError
from ..weights import WeightSet
from .interface import ModelSource
from .model import RemoteModel, ResolvedModel, base_folder, check_repo_id, read_card, read_config, resolve_folder

class LocalHub(ModelSource):
    """A folder laid out like the Hub: ``ROOT/ORG/NAME/`` with config, weights, tokenizer, card.

    Example:
        >>> hub = LocalHub("~/.cache/hfscan/demo-hub")
        >>> hub.resolve("demo/sentiment-reviews-v2").path.name
        'sentiment-reviews-v2'
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.location = str(self.root)

    def repo_path(self, repo_id: str) -> Path:
        return self.root / repo_id

    def _locate(self, ref: str) -> tuple[str, str | None, Path]:
        """``ORG/NAME[@rev]`` -> (repo id, revision, its folder), or ModelNotFoundError."""
        repo_id, _, rev = ref.partition("@")
        check_repo_id(repo_id)
        path = self.repo_path(repo_id)
        if not path.is_dir():
            raise ModelNotFoundError(f"{repo_id}: no such model in {self.root}")
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ModelNotFoundError(f"{repo_id}: resolves outside the hub folder {self.root}")
        return repo_id, rev or None, path

    def resolve(self, ref: str, loadable: bool = True) -> ResolvedModel:
        repo_id, rev, path = self._locate(ref)
        return resolve_folder(path, ref=repo_id, loadable=loadable, repo_id=repo_id, revision=rev)

    def list_models(self) -> list[str]:
        return sorted(
            f"{org.name}/{repo.name}"
            for org in self.root.iterdir() if org.is_dir()
            for repo in org.iterdir() if (repo / "config.json").exists() or (repo / "adapter_config.json").exists()
        )

    # the same interface as HfHub, so discovery and the demo share one code path
    def describe(self, ref: str, headers: bool = True) -> RemoteModel:
        repo_id, rev, path = self._locate(ref)
        card = read_card(path)
        files = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        tags = list(card.get("tags") or [])
        base = card.get("base_model")
        rel = card.get("base_model_relation") or "finetune"
        for b in ([base] if isinstance(base, str) else (base or [])):
            tags.append(f"base_model:{rel}:{b}")
        digest = hashlib.sha256()
        for f in files:
            st = (path / f).stat()
            digest.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
        remote = RemoteModel(repo_id, sha="local-" + digest.hexdigest()[:16], revision=rev, files=files,
                             card=card, tags=tags, pipeline_tag=card.get("pipeline_tag"))
        if headers:
            model = resolve_folder(path, ref=repo_id, repo_id=repo_id)
            remote.config, remote.header = model.config, model.header
        return remote

    def load_config(self, remote: RemoteModel) -> dict:
        if remote.config is None:
            path = self.repo_path(remote.repo_id) / "config.json"
            if not path.is_file():
                raise UnsupportedModelError(f"{remote.repo_id} has no config.json")
            remote.config = read_config(path, remote.repo_id)
        return remote.config

    def load_header(self, remote: RemoteModel) -> dict:
        if remote.header is None:
            remote.header = WeightSet.open(self.repo_path(remote.repo_id), label=remote.repo_id).header
        return remote.header

    def fetch(self, remote: RemoteModel) -> ResolvedModel:
        return self.resolve(remote.repo_id)

    def list_author(self, author: str, pipeline_tag: str | None = None) -> list[str]:
        return [m for m in self.list_models() if m.split("/")[0] == author]

    def list_finetunes(self, base: str, pipeline_tag: str | None = "text-classification", limit: int = 50,
                       relation: str = "finetune") -> list[RemoteModel]:
        out = []
        for repo_id in self.list_models():
            try:
                r = self.describe(repo_id, headers=False)
            except Exception:  # a broken repo is no candidate; it never stops discovery
                continue
            if f"base_model:{relation}:{base}" in r.tags and (pipeline_tag is None or r.pipeline_tag == pipeline_tag):
                out.append(r)
        return out[:limit]

    def fetch_base(self, ref: str) -> ResolvedModel:
        repo_id, _, path = self._locate(ref)
        return base_folder(path, repo_id, repo_id=repo_id)
