"""What is known of a model: `RemoteModel` (a repo at one commit, before any weight is downloaded) and
`ResolvedModel` (its files on disk, validated), and the folder validation every source shares.

Validation happens before any tensor is loaded: a ``config.json`` that a model family takes and
transformers knows (no remote code), safetensors weights (pickle is refused), a tokenizer, and
readable safetensors headers.

Example:
    >>> m = resolve_folder("models/bert-sst2")  # doctest: +SKIP
    >>> m.labels  # doctest: +SKIP
    ['negative', 'positive']
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelNotFoundError, UnsupportedModelError
from ..weights import TensorInfo, WeightSet

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "merges.txt",
                   "vocab.json", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json")


def check_repo_id(repo_id: str) -> None:
    """Refuse what is not a Hub model id by the Hub's own rules (``name`` or ``org/name``; no ``..``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelNotFoundError(f"{repo_id!r} is neither a model folder nor a valid Hub model id (org/name)") from None


def labels_of(config: dict) -> list[str]:
    """Label names in id order (``id2label``), or ``LABEL_i`` when the config has none."""
    id2label = config.get("id2label") or {}
    n = len(id2label) if id2label else int(config.get("num_labels", 2))
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


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
    adapter: dict | None = None  # a PEFT adapter's adapter_config.json (then ``config`` is its base's)
    base_path: Path | None = None  # an adapter's base model folder, once resolved

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
        return labels_of(self.config)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def base_model(self) -> str | list[str] | None:
        return self.card.get("base_model")

    @property
    def is_adapter(self) -> bool:
        return self.adapter is not None

    @property
    def adapter_base(self) -> str | None:
        """The base an adapter names: its ``base_model_name_or_path``, else its card's ``base_model``."""
        ref = (self.adapter or {}).get("base_model_name_or_path") or self.base_model
        if isinstance(ref, list):
            ref = ref[0] if len(ref) == 1 else None
        return ref if isinstance(ref, str) and ref else None

    def weights(self) -> WeightSet:
        return WeightSet.open(self.path, label=self.name)


@dataclass
class RemoteModel:
    """What the Hub says about a repo at one commit, before any weight is downloaded."""

    repo_id: str
    sha: str
    revision: str | None
    files: list[str]
    card: dict
    tags: list[str]
    pipeline_tag: str | None
    downloads: int = 0
    likes: int = 0
    created_at: str | None = None
    config: dict | None = None  # fetched on demand (a small file)
    header: dict[str, TensorInfo] | None = None  # from range reads of the safetensors headers

    @property
    def author(self) -> str:
        return self.repo_id.split("/")[0]

    @property
    def has_safetensors(self) -> bool:
        return any(f.endswith(".safetensors") for f in self.files)

    @property
    def pickle_files(self) -> list[str]:
        from ..weights import PICKLE_SUFFIXES

        return [f for f in self.files if f.endswith(PICKLE_SUFFIXES)]



def read_config(path: Path, label: str) -> dict:
    """A ``config.json`` as a dict, or one clear `UnsupportedModelError`."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnsupportedModelError(f"{label}: config.json is not valid UTF-8 JSON") from None
    except OSError as e:
        raise UnsupportedModelError(f"{label}: config.json cannot be read ({e.__class__.__name__})") from None
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{label}: config.json is not a JSON object")
    return config


MAX_CARD_HEADER = 256 * 1024  # bytes of YAML front matter read at most


def read_card(folder: Path) -> dict:
    r"""The YAML metadata of a model card (README.md), or ``{}``.

    A card is data from whoever uploaded the model: its front matter is read up to `MAX_CARD_HEADER` bytes,
    with a safe loader that refuses YAML aliases (an alias bomb expands a few hundred bytes into gigabytes),
    and anything that is not a mapping of it is ignored. A broken card is no reason to refuse a scan.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> _ = (d / "README.md").write_text("---\na: &x [1, 2]\nb: [*x, *x]\n---\ntext")
    >>> read_card(d)
    {}
    """
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    try:
        with open(readme, "rb") as f:
            head = f.read(MAX_CARD_HEADER + 8).decode("utf-8", errors="replace")
    except OSError:
        return {}
    if not head.startswith("---"):
        return {}
    end = head.find("\n---", 3)
    if end < 0:
        return {}
    return _safe_yaml(head[3:end])


def _safe_yaml(text: str) -> dict:
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("aliases are not read in model cards")
            return super().compose_node(parent, index)

    try:
        data = yaml.load(text, Loader=NoAliases)  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_labels(config: dict, label: str) -> None:
    """``id2label`` / ``label2id``, when present, map label ids (integers, as JSON strings) to names."""
    for key, ids_first in (("id2label", True), ("label2id", False)):
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise UnsupportedModelError(f"{label}: config.json's {key} is a {type(value).__name__}, not a mapping "
                                        "of label ids to names")
        for k, v in value.items():
            ident, name = (k, v) if ids_first else (v, k)
            if not isinstance(name, str) or not str(ident).lstrip("-").isdigit():
                raise UnsupportedModelError(f"{label}: config.json's {key} has an entry that is not "
                                            "label id -> name")


def check_config(config: dict, label: str, known_to_transformers: bool = True) -> None:
    """Refuse configs hfscan cannot scan safely or meaningfully: remote code, an architecture no model
    family takes, or (``known_to_transformers``) one this transformers does not know.

    ``known_to_transformers=False`` skips the (0.6 s) lookup in transformers, for commands that only
    merge tensors and never load the model.
    """
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{label}: config.json is not a JSON object")
    if config.get("auto_map"):
        raise UnsupportedModelError(
            f"{label} needs custom code (auto_map in config.json); hfscan never runs trust_remote_code"
        )
    _check_labels(config, label)
    from ..families import family_for

    problem = family_for(config, label).config_problem(config)  # family_for raises naming what hfscan scans
    if problem:
        raise UnsupportedModelError(f"{label}: {problem}")
    if not known_to_transformers:
        return
    import transformers

    arch = str((config.get("architectures") or ["?"])[0])
    if arch not in dir(transformers):  # the lazy module lists its names without importing them
        raise UnsupportedModelError(
            f"{label}: architecture {arch} is not in transformers {transformers.__version__}; "
            "hfscan never runs trust_remote_code"
        )


def resolve_folder(folder: str | os.PathLike, ref: str | None = None, loadable: bool = True, **meta) -> ResolvedModel:
    """Validate a local model folder and describe it (``loadable``: check transformers knows it)."""
    folder = Path(folder)
    label = ref or str(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"{label}: no such model folder")
    check_files(folder, label)
    cfg_path = folder / "config.json"
    adapter = read_adapter_config(folder, label) if not cfg_path.exists() else None
    if adapter is None:
        if not cfg_path.exists():
            raise UnsupportedModelError(f"{label} has no config.json")
        config = read_config(cfg_path, label)
        check_config(config, label, known_to_transformers=loadable)
    else:
        config = {}  # the base's, once the base is resolved (`attach_base`)
    weights = WeightSet.open(folder, label=label)  # refuses pickle-only folders, checks headers
    if adapter is None and not any((folder / f).exists() for f in TOKENIZER_FILES):
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
                         sha=sha, adapter=adapter, **meta)


def check_files(folder: Path, label: str) -> None:
    """Refuse a folder whose files hfscan reads are not regular files (a FIFO would hang the scan, a device
    file is no model) or are symlinks out of the folder. A Hugging Face cache snapshot's symlinks into its
    own ``blobs/`` are the cache's layout and allowed."""
    import stat

    root = folder.resolve()
    allowed = [root] + ([root.parents[1] / "blobs"] if root.parent.name == "snapshots" else [])
    for f in folder.iterdir():
        if f.name.startswith(".") or f.suffix not in (".safetensors", ".json", ".md", ".txt", ".model", ".jinja"):
            continue
        try:
            mode = f.stat().st_mode
        except OSError:
            raise UnsupportedModelError(f"{label}: {f.name} is a broken link") from None
        if not stat.S_ISREG(mode):
            raise UnsupportedModelError(f"{label}: {f.name} is not a regular file")
        if f.is_symlink() and not any(f.resolve().is_relative_to(a) for a in allowed):
            raise UnsupportedModelError(f"{label}: {f.name} is not a regular file (a link out of the model folder)")


def is_adapter_folder(folder: Path) -> bool:
    """A PEFT adapter folder: an ``adapter_config.json`` and no ``config.json`` of its own."""
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def read_adapter_config(folder: Path, label: str) -> dict | None:
    """A PEFT LoRA adapter's config (``None`` when the folder holds none); other adapter kinds are refused."""
    f = folder / "adapter_config.json"
    if not f.is_file():
        return None
    cfg = read_config(f, label)
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise UnsupportedModelError(f"{label}: a {cfg.get('peft_type') or 'PEFT'} adapter; hfscan reads LoRA adapters")
    if cfg.get("auto_map"):
        raise UnsupportedModelError(f"{label} needs custom code (auto_map); hfscan never runs trust_remote_code")
    return cfg


def attach_base(adapter: ResolvedModel, base: ResolvedModel, loadable: bool = True) -> ResolvedModel:
    """The adapter described as a model of its base's architecture (its config is the base's)."""
    config = read_config(base.path / "config.json", base.name) if (base.path / "config.json").exists() else {}
    if not config:
        raise UnsupportedModelError(f"{adapter.name}: its base {base.name} has no config.json")
    check_config(config, base.name, known_to_transformers=loadable)
    adapter.config, adapter.base_path = config, base.path
    return adapter




def base_folder(folder: Path, ref: str, **meta) -> ResolvedModel:
    """A base model's folder: only its weights are needed (it may be a bare encoder or LM, no task head)."""
    ws = WeightSet.open(folder, label=ref)
    return ResolvedModel(ref=ref, path=folder, config={}, header=ws.header, **meta)
