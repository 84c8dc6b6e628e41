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

    def _locate(self, ref: str) -> tuple[str, str | None, Path]:
        """``ORG/NAME[@rev]`` -> (repo id, revision, its folder), or ModelNotFoundError."""
        repo_id, _, rev = ref.partition("@")
        path = self.repo_path(repo_id)
        if not path.is_dir():
            raise ModelNotFoundError(f"{repo_id}: no such model in {self.root}")
        return repo_id, rev or None, path

    def resolve(self, ref: str, loadable: bool = True) -> ResolvedModel:
        repo_id, rev, path = self._locate(ref)
        return resolve_folder(path, ref=repo_id, loadable=loadable, repo_id=repo_id, revision=rev)

    def list_models(self) -> list[str]:
        return sorted(
            f"{org.name}/{repo.name}"
            for org in self.root.iterdir() if org.is_dir()
            for repo in org.iterdir() if (repo / "config.json").exists()
        )

    # the same interface as HfHub, so discovery and the demo share one code path
    def describe(self, ref: str, headers: bool = True) -> "RemoteModel":
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

    def load_config(self, remote: "RemoteModel") -> dict:
        if remote.config is None:
            try:
                remote.config = json.loads((self.repo_path(remote.repo_id) / "config.json").read_text())
            except (OSError, json.JSONDecodeError):
                raise UnsupportedModelError(f"{remote.repo_id} has no readable config.json") from None
        return remote.config

    def load_header(self, remote: "RemoteModel") -> dict:
        if remote.header is None:
            remote.header = WeightSet.open(self.repo_path(remote.repo_id), label=remote.repo_id).header
        return remote.header

    def fetch(self, remote: "RemoteModel") -> ResolvedModel:
        return self.resolve(remote.repo_id)

    def list_author(self, author: str, pipeline_tag: str | None = None) -> list[str]:
        return [m for m in self.list_models() if m.split("/")[0] == author]

    def list_finetunes(self, base: str, pipeline_tag: str | None = "text-classification", limit: int = 50
                       ) -> list["RemoteModel"]:
        out = []
        for repo_id in self.list_models():
            r = self.describe(repo_id, headers=False)
            if f"base_model:finetune:{base}" in r.tags and (pipeline_tag is None or r.pipeline_tag == pipeline_tag):
                out.append(r)
        return out[:limit]


def local_hub_dir(hub_dir: str | os.PathLike | None) -> str | os.PathLike | None:
    """The local hub folder: the one given, else ``HFSCAN_HUB_DIR``, else none."""
    return hub_dir or os.environ.get("HFSCAN_HUB_DIR") or None


def resolve(ref: str, hub_dir: str | os.PathLike | None = None, loadable: bool = True) -> ResolvedModel:
    """Resolve a folder path or an ``ORG/NAME`` in a local hub."""
    if Path(ref).expanduser().is_dir():
        return resolve_folder(Path(ref).expanduser(), ref=ref, loadable=loadable)
    hub_dir = local_hub_dir(hub_dir)
    if hub_dir:
        return LocalHub(hub_dir).resolve(ref, loadable=loadable)
    raise ModelNotFoundError(
        f"{ref}: no such folder (Hub ids need --hub-dir DIR or HFSCAN_HUB_DIR for a local hub in this version)"
    )


# --------------------------------------------------------------------------------------------
# The Hub (huggingface_hub's real client; HF_ENDPOINT points it at a mirror or a test server)
# --------------------------------------------------------------------------------------------

ALLOW_PATTERNS = ["*.safetensors", "model.safetensors.index.json", "config.json", "README.md", *TOKENIZER_FILES]


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
        from .weights import PICKLE_SUFFIXES

        return [f for f in self.files if f.endswith(PICKLE_SUFFIXES)]


def _hub_errors(ref: str, endpoint: str):
    """Translate huggingface_hub / network errors into one-line `HfscanError` s."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        from huggingface_hub import errors as e

        from .errors import HfscanError, PickleWeightsError

        try:
            yield
        except e.HFValidationError:
            raise ModelNotFoundError(f"{ref!r} is neither a model folder nor a valid Hub model id (org/name)") from None
        except e.GatedRepoError:
            raise HfscanError(f"{ref} is gated: accept its conditions on the Hub, then log in "
                              "(`hf auth login` or HF_TOKEN)") from None
        except e.RepositoryNotFoundError:
            raise ModelNotFoundError(f"{ref}: repository not found on {endpoint} (if it is private, log in with "
                                     "`hf auth login` or set HF_TOKEN)") from None
        except e.RevisionNotFoundError:
            raise ModelNotFoundError(f"{ref}: revision not found") from None
        except (e.EntryNotFoundError, e.RemoteEntryNotFoundError) as x:
            raise ModelNotFoundError(f"{ref}: a file is missing on the Hub ({str(x).splitlines()[0][:120]})") from None
        except e.NotASafetensorsRepoError:
            raise PickleWeightsError(f"{ref} has no safetensors weights; hfscan never unpickles weights") from None
        except e.SafetensorsParsingError:
            from .errors import CorruptWeightsError

            raise CorruptWeightsError(f"{ref}: corrupt safetensors header on the Hub") from None
        except e.HfHubHTTPError as x:
            raise HfscanError(f"{ref}: the Hub answered {str(x).splitlines()[0][:160]}") from None
        except (OSError, ConnectionError) as x:
            raise HfscanError(f"{ref}: network failure talking to {endpoint} ({x.__class__.__name__})") from None
        except Exception as x:
            if x.__class__.__module__.startswith("httpx"):
                raise HfscanError(f"{ref}: network failure talking to {endpoint} ({x.__class__.__name__})") from None
            raise

    return ctx()


RETRY_STATUS = {429, 500, 502, 503, 504}


def with_retries(fn, *args, attempts: int = 4, base_delay: float | None = None, **kwargs):
    """Call a huggingface_hub function, retrying 429 and 5xx answers with exponential backoff.

    (huggingface_hub retries downloads itself; ``model_info`` / ``list_models`` / metadata reads
    go through here.) ``HFSCAN_RETRY_DELAY`` sets the first delay in seconds (default 1).
    """
    import time

    from huggingface_hub.errors import HfHubHTTPError

    delay = float(os.environ.get("HFSCAN_RETRY_DELAY", "1")) if base_delay is None else base_delay
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status not in RETRY_STATUS or attempt == attempts - 1:
                raise
            time.sleep(delay * 2**attempt)


class HfHub:
    """Models on the Hugging Face Hub (or any server at ``HF_ENDPOINT``), via huggingface_hub.

    Tokens come from ``HF_TOKEN`` or the huggingface_hub login; they are never printed.

    Example:
        >>> hub = HfHub()
        >>> remote = hub.describe("textattack/bert-base-uncased-SST-2")
        >>> model = hub.fetch(remote)
    """

    def __init__(self, endpoint: str | None = None, cache_dir: str | None = None):
        from huggingface_hub import HfApi

        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self.api = HfApi(endpoint=self.endpoint)
        self.cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE") or None

    def describe(self, ref: str, headers: bool = True) -> RemoteModel:
        repo_id, _, rev = ref.partition("@")
        with _hub_errors(ref, self.endpoint):
            info = with_retries(self.api.model_info, repo_id, revision=rev or None)
            card = dict(info.card_data.to_dict()) if info.card_data else {}
            remote = RemoteModel(
                repo_id=repo_id, sha=info.sha, revision=rev or None,
                files=[s.rfilename for s in (info.siblings or [])], card=card, tags=list(info.tags or []),
                pipeline_tag=info.pipeline_tag, downloads=info.downloads or 0, likes=info.likes or 0,
                created_at=str(info.created_at) if info.created_at else None,
            )
        if not remote.has_safetensors:
            from .errors import PickleWeightsError

            if remote.pickle_files:
                raise PickleWeightsError(
                    f"{repo_id} has only pickle weights ({', '.join(remote.pickle_files[:3])}); hfscan loads "
                    "safetensors only because unpickling can run arbitrary code")
            raise ModelNotFoundError(f"{repo_id} has no model weights")
        if headers:
            self.load_config(remote)
            check_classifier_config(remote.config, repo_id)
            self.load_header(remote)
        return remote

    def load_config(self, remote: RemoteModel) -> dict:
        if remote.config is None:
            from huggingface_hub import hf_hub_download

            if "config.json" not in remote.files:
                raise UnsupportedModelError(f"{remote.repo_id} has no config.json")
            with _hub_errors(remote.repo_id, self.endpoint):
                path = hf_hub_download(remote.repo_id, "config.json", revision=remote.sha, endpoint=self.endpoint,
                                       cache_dir=self.cache_dir)
            try:
                remote.config = json.loads(Path(path).read_text())
            except json.JSONDecodeError:
                raise UnsupportedModelError(f"{remote.repo_id}: config.json is not valid JSON") from None
        return remote.config

    def load_header(self, remote: RemoteModel) -> dict[str, TensorInfo]:
        """Tensor names, shapes and dtypes from range reads of the safetensors headers."""
        if remote.header is None:
            with _hub_errors(remote.repo_id, self.endpoint):
                meta = with_retries(self.api.get_safetensors_metadata, remote.repo_id, revision=remote.sha)
            header = {}
            for fname, fm in meta.files_metadata.items():
                for name, t in fm.tensors.items():
                    header[name] = TensorInfo(name, t.dtype, tuple(t.shape), fname)
            remote.header = header
        return remote.header

    def fetch(self, remote: RemoteModel) -> ResolvedModel:
        """Download what a scan needs (safetensors, config, tokenizer, card) at the pinned commit."""
        from huggingface_hub import snapshot_download

        with _hub_errors(remote.repo_id, self.endpoint):
            path = snapshot_download(remote.repo_id, revision=remote.sha, allow_patterns=ALLOW_PATTERNS,
                                     endpoint=self.endpoint, cache_dir=self.cache_dir)
        return resolve_folder(Path(path), ref=remote.repo_id, repo_id=remote.repo_id, revision=remote.revision,
                              sha=remote.sha)

    def list_author(self, author: str, pipeline_tag: str | None = None, limit: int = 10_000) -> list[str]:
        with _hub_errors(author, self.endpoint):
            return with_retries(lambda: [m.id for m in self.api.list_models(author=author, pipeline_tag=pipeline_tag,
                                                                            limit=limit)])

    def list_finetunes(self, base: str, pipeline_tag: str | None = "text-classification", limit: int = 50
                       ) -> list[RemoteModel]:
        with _hub_errors(base, self.endpoint):
            models = with_retries(lambda: list(self.api.list_models(
                filter=f"base_model:finetune:{base}", pipeline_tag=pipeline_tag, sort="downloads", limit=limit,
                full=True, cardData=True)))
        out = []
        for m in models:
            card = dict(m.card_data.to_dict()) if getattr(m, "card_data", None) else {}
            out.append(RemoteModel(repo_id=m.id, sha=m.sha or "", revision=None,
                                   files=[s.rfilename for s in (m.siblings or [])], card=card,
                                   tags=list(m.tags or []), pipeline_tag=m.pipeline_tag,
                                   downloads=m.downloads or 0, likes=m.likes or 0,
                                   created_at=str(m.created_at) if m.created_at else None))
        return out
