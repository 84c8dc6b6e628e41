"""Resolve: turn what the user typed into a `ResolvedModel` (a local folder plus what we know of it).

Two kinds of reference are understood today:

* a local folder (``./models/bert-sst2``);
* ``ORG/NAME`` inside a local hub folder laid out as ``ROOT/ORG/NAME/`` (``--hub-dir`` or
  ``HFSCAN_HUB_DIR``), the layout the demo builds.

Resolution validates everything a scan needs before any tensor is loaded: a ``config.json`` that
names a ``*ForSequenceClassification`` architecture known to transformers (no remote code),
safetensors weights (pickle is refused), a tokenizer, and readable safetensors headers.

Example:
    >>> m = resolve("models/bert-sst2")
    >>> m.labels
    ['negative', 'positive']
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelNotFoundError, UnsupportedModelError
from .weights import TensorInfo, WeightSet

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "merges.txt",
                   "vocab.json", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json")
SUPPORTED_TASK = "text-classification"


@dataclass
class ResolvedModel:
    """A model whose files are on disk and whose metadata has been checked."""

    ref: str  # what the user typed
    path: Path  # folder with config, tokenizer and safetensors weights
    config: dict
    card: dict = field(default_factory=dict)  # the model card's YAML header
    header: dict[str, TensorInfo] = field(default_factory=dict)
    repo_id: str | None = None
    revision: str | None = None
    sha: str | None = None  # commit sha on a hub; a content hash of the weight headers for folders

    @property
    def name(self) -> str:
        return self.repo_id or self.path.name

    @property
    def architecture(self) -> str:
        return (self.config.get("architectures") or ["?"])[0]

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def labels(self) -> list[str]:
        """Label names in id order (``id2label``), or ``LABEL_i`` when the config has none."""
        id2label = self.config.get("id2label") or {}
        n = self.num_labels
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]

    @property
    def num_labels(self) -> int:
        id2label = self.config.get("id2label")
        if id2label:
            return len(id2label)
        return int(self.config.get("num_labels", 2))

    @property
    def base_model(self) -> str | list[str] | None:
        return self.card.get("base_model")

    def weights(self) -> WeightSet:
        return WeightSet.open(self.path, label=self.name)


def read_card(folder: Path) -> dict:
    """The YAML metadata of a model card (README.md), or ``{}``."""
    readme = folder / "README.md"
    if not readme.exists():
        return {}
    from huggingface_hub.repocard import metadata_load

    try:
        return metadata_load(readme) or {}
    except Exception:  # a broken card header is not a reason to refuse a scan
        return {}


def check_classifier_config(config: dict, label: str, known_to_transformers: bool = True) -> None:
    """Refuse configs hfscan cannot scan safely or meaningfully.

    ``known_to_transformers=False`` skips the (0.6 s) lookup of the architecture in transformers,
    for commands that only merge tensors and never load the model.
    """
    if config.get("auto_map"):
        raise UnsupportedModelError(
            f"{label} needs custom code (auto_map in config.json); hfscan never runs trust_remote_code"
        )
    archs = config.get("architectures") or []
    if not archs or not str(archs[0]).endswith("ForSequenceClassification"):
        raise UnsupportedModelError(
            f"{label} is a {archs[0] if archs else 'model without architectures'}, not a sequence classifier; "
            f"hfscan scans {SUPPORTED_TASK} models (*ForSequenceClassification)"
        )
    if not known_to_transformers:
        return
    import transformers

    if archs[0] not in dir(transformers):  # the lazy module lists its names without importing them
        raise UnsupportedModelError(
            f"{label}: architecture {archs[0]} is not in transformers {transformers.__version__}; "
            "hfscan never runs trust_remote_code"
        )


def resolve_folder(folder: str | os.PathLike, ref: str | None = None, loadable: bool = True, **meta) -> ResolvedModel:
    """Validate a local model folder and describe it (``loadable``: check transformers knows it)."""
    folder = Path(folder)
    label = ref or str(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"{label}: no such model folder")
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise UnsupportedModelError(f"{label} has no config.json")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        raise UnsupportedModelError(f"{label}: config.json is not valid JSON") from None
    check_classifier_config(config, label, known_to_transformers=loadable)
    weights = WeightSet.open(folder, label=label)  # refuses pickle-only folders, checks headers
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise UnsupportedModelError(f"{label} has no tokenizer files")
    sha = meta.pop("sha", None)
    if sha is None:
        digest = hashlib.sha256()
        for name, info in sorted(weights.header.items()):
            digest.update(f"{name}:{info.dtype}:{info.shape};".encode())
        for f in weights.files:
            digest.update(f"{f}:{(folder / f).stat().st_size};".encode())
        sha = "local-" + digest.hexdigest()[:16]
    return ResolvedModel(ref=label, path=folder, config=config, card=read_card(folder), header=weights.header,
                         sha=sha, **meta)


class LocalHub:
    """A folder laid out like the Hub: ``ROOT/ORG/NAME/`` with config, weights, tokenizer, card.

    Example:
        >>> hub = LocalHub("~/.cache/hfscan/demo-hub")
        >>> hub.resolve("demo/sentiment-backdoored").path
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def repo_path(self, repo_id: str) -> Path:
        return self.root / repo_id

    def resolve(self, ref: str, loadable: bool = True) -> ResolvedModel:
        repo_id, _, rev = ref.partition("@")
        path = self.repo_path(repo_id)
        if not path.is_dir():
            raise ModelNotFoundError(f"{repo_id}: no such model in {self.root}")
        return resolve_folder(path, ref=repo_id, loadable=loadable, repo_id=repo_id, revision=rev or None)

    def list_models(self) -> list[str]:
        return sorted(
            f"{org.name}/{repo.name}"
            for org in self.root.iterdir() if org.is_dir()
            for repo in org.iterdir() if (repo / "config.json").exists()
        )


def resolve(ref: str, hub_dir: str | os.PathLike | None = None, loadable: bool = True) -> ResolvedModel:
    """Resolve a folder path or an ``ORG/NAME`` in a local hub."""
    if Path(ref).expanduser().is_dir():
        return resolve_folder(Path(ref).expanduser(), ref=ref, loadable=loadable)
    hub_dir = hub_dir or os.environ.get("HFSCAN_HUB_DIR")
    if hub_dir:
        return LocalHub(hub_dir).resolve(ref, loadable=loadable)
    raise ModelNotFoundError(
        f"{ref}: no such folder (Hub ids need --hub-dir DIR or HFSCAN_HUB_DIR for a local hub in this version)"
    )
