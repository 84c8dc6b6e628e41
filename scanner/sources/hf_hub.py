"""The Hugging Face Hub as a model source, through huggingface_hub's real client (``HF_ENDPOINT``
points it at a mirror or a test server). Tokens come from ``HF_TOKEN`` or the huggingface_hub login
and are never printed.

Example:
    >>> hub = HfHub()
    >>> model = hub.fetch(hub.describe("textattack/bert-base-uncased-SST-2"))
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

from .. import config
from ..errors import (CorruptWeightsError, HfscanError, ModelNotFoundError, PickleWeightsError, TransientHubError,
                      UnsupportedModelError)
from ..weights import TensorInfo
from .interface import ModelSource
from .model import (TOKENIZER_FILES, RemoteModel, ResolvedModel, base_folder, check_config, read_adapter_config,
                    read_card, read_config, resolve_folder)

ALLOW_PATTERNS = ["*.safetensors", "model.safetensors.index.json", "config.json", "adapter_config.json", "README.md",
                  "chat_template.jinja", *TOKENIZER_FILES]


def _translate(x: Exception, ref: str, endpoint: str) -> Exception | None:
    """The one-line `HfscanError` for a huggingface_hub / network error, or ``None`` for other errors."""
    from huggingface_hub import errors as e

    login = "(if it is private, log in with `hf auth login` or set HF_TOKEN)"
    if "/" not in ref.partition("@")[0]:
        login = "and no such local folder " + login
    table = [  # most specific first: several of these subclass HfHubHTTPError
        (e.OfflineModeIsEnabled, HfscanError, f"{ref}: HF_HUB_OFFLINE is set and this needs the Hub (peer discovery, "
                                              "or a file not in the cache); give --peer models that are in the cache"),
        (e.LocalEntryNotFoundError, ModelNotFoundError, f"{ref} is not in the Hugging Face cache "
                                                        "(HF_HUB_OFFLINE is set: scan it once online first)"),
        (e.HFValidationError, ModelNotFoundError, f"{ref!r} is neither a model folder nor a valid Hub model id (org/name)"),
        (e.GatedRepoError, HfscanError, f"{ref} is gated: accept its conditions on the Hub, then log in "
                                        "(`hf auth login` or HF_TOKEN)"),
        (e.RepositoryNotFoundError, ModelNotFoundError, f"{ref}: repository not found on {endpoint} {login}"),
        (e.RevisionNotFoundError, ModelNotFoundError, f"{ref}: revision not found"),
        ((e.EntryNotFoundError, e.RemoteEntryNotFoundError), ModelNotFoundError,
         f"{ref}: a file is missing on the Hub ({_first_line(x, 120)})"),
        (e.NotASafetensorsRepoError, PickleWeightsError, f"{ref} has no safetensors weights; hfscan never unpickles weights"),
        (e.SafetensorsParsingError, CorruptWeightsError, f"{ref}: corrupt safetensors header on the Hub"),
        (e.HfHubHTTPError, TransientHubError if _status(x) in RETRY_STATUS else HfscanError,
         f"{ref}: the Hub answered {_first_line(x, 160)}{_token_hint(x)}"),
        ((OSError, ConnectionError), TransientHubError,
         f"{ref}: network failure talking to {endpoint} ({x.__class__.__name__})"),
    ]
    for kinds, err, msg in table:
        if isinstance(x, kinds):
            return err(msg)
    if x.__class__.__module__.startswith("httpx"):
        return TransientHubError(f"{ref}: network failure talking to {endpoint} ({x.__class__.__name__})")
    return None


def _token_hint(x: Exception) -> str:
    """Why a 401/403 may have happened: ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` keeps huggingface_hub from sending one."""
    if _status(x) in (401, 403) and config.hf_implicit_token_disabled():
        return " (HF_HUB_DISABLE_IMPLICIT_TOKEN is set, so no token was sent)"
    return ""


def _status(x: Exception) -> int | None:
    return getattr(getattr(x, "response", None), "status_code", None)


def _first_line(x: Exception, n: int) -> str:
    return (str(x).splitlines() or [x.__class__.__name__])[0][:n]


@contextlib.contextmanager
def hub_errors(ref: str, endpoint: str) -> Iterator[None]:
    """Translate huggingface_hub / network errors into one-line `HfscanError` s."""
    try:
        yield
    except HfscanError:
        raise
    except Exception as x:
        err = _translate(x, ref, endpoint)
        if err is None:
            raise
        raise err from None


RETRY_STATUS = {429, 500, 502, 503, 504}


def with_retries(fn, *args, attempts: int = 4, base_delay: float | None = None, **kwargs):
    """Call a huggingface_hub function, retrying 429 and 5xx answers with exponential backoff.

    (huggingface_hub retries downloads itself; ``model_info`` / ``list_models`` / metadata reads
    go through here.) ``HFSCAN_RETRY_DELAY`` sets the first delay in seconds (default 1).
    """
    from huggingface_hub.errors import HfHubHTTPError

    delay = config.retry_delay() if base_delay is None else base_delay
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status not in RETRY_STATUS or attempt == attempts - 1:
                raise
            time.sleep(delay * 2**attempt)


def _remember_ref(snapshot: Path, revision: str, sha: str) -> None:
    """Record ``revision -> sha`` in the cache's ``refs/`` (huggingface_hub's cache layout), as a download by
    branch name does: a pinned download by commit does not, and ``HF_HUB_OFFLINE`` resolves names through it."""
    ref = snapshot.parents[1] / "refs" / revision
    if sha and snapshot.name == sha and (not ref.is_file() or ref.read_text().strip() != sha):
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(sha)
        except OSError:
            pass  # a read-only cache: offline scans then need the commit (org/name@sha)


def _is_adapter(remote: RemoteModel) -> bool:
    """A PEFT adapter repo: ``adapter_config.json`` and no ``config.json`` of its own."""
    return "adapter_config.json" in remote.files and "config.json" not in remote.files


class HfHub(ModelSource):
    """Models on the Hugging Face Hub (or any server at ``HF_ENDPOINT``), via huggingface_hub.

    Tokens come from ``HF_TOKEN`` or the huggingface_hub login; they are never printed.

    Example:
        >>> hub = HfHub()
        >>> remote = hub.describe("textattack/bert-base-uncased-SST-2")
        >>> model = hub.fetch(remote)
    """

    def __init__(self, endpoint: str | None = None, cache_dir: str | None = None):
        from huggingface_hub import HfApi

        self.endpoint = (endpoint or config.hf_endpoint()).rstrip("/")
        self.location = self.endpoint
        self.api = HfApi(endpoint=self.endpoint)
        self.cache_dir = cache_dir or config.hf_hub_cache()

    def describe(self, ref: str, headers: bool = True) -> RemoteModel:
        repo_id, _, rev = ref.partition("@")
        if config.hf_offline():
            return self._cached(repo_id, rev, headers)
        with hub_errors(ref, self.endpoint):
            info = with_retries(self.api.model_info, repo_id, revision=rev or None)
            card = dict(info.card_data.to_dict()) if info.card_data else {}
            remote = RemoteModel(
                repo_id=repo_id, sha=info.sha, revision=rev or None,
                files=[s.rfilename for s in (info.siblings or [])], card=card, tags=list(info.tags or []),
                pipeline_tag=info.pipeline_tag, downloads=info.downloads or 0, likes=info.likes or 0,
                created_at=str(info.created_at) if info.created_at else None,
            )
        if not remote.has_safetensors:
            if remote.pickle_files:
                raise PickleWeightsError(
                    f"{repo_id} has only pickle weights ({', '.join(remote.pickle_files[:3])}); hfscan loads "
                    "safetensors only because unpickling can run arbitrary code")
            raise ModelNotFoundError(f"{repo_id} has no model weights")
        if headers:
            self.load_config(remote)
            if not _is_adapter(remote):  # an adapter's config is its base's, checked once the base is resolved
                check_config(remote.config, repo_id)
            self.load_header(remote)
        return remote

    def _cached(self, repo_id: str, rev: str, headers: bool) -> RemoteModel:
        """The model as the Hugging Face cache has it (``HF_HUB_OFFLINE``): its snapshot at ``rev``."""
        from huggingface_hub import snapshot_download

        with hub_errors(repo_id + (f"@{rev}" if rev else ""), self.endpoint):
            path = Path(snapshot_download(repo_id, revision=rev or None, local_files_only=True,
                                          cache_dir=self.cache_dir))
        card = read_card(path)
        remote = RemoteModel(repo_id=repo_id, sha=path.name, revision=rev or None,
                             files=sorted(p.name for p in path.iterdir()), card=card,
                             tags=list(card.get("tags") or []), pipeline_tag=card.get("pipeline_tag"))
        if headers:
            model = resolve_folder(path, ref=repo_id, repo_id=repo_id, revision=rev or None, sha=path.name)
            remote.config, remote.header = model.config, model.header
        return remote

    def load_config(self, remote: RemoteModel) -> dict:
        """The repo's ``config.json``; for a LoRA adapter ``{}`` (its base's comes later) once its
        ``adapter_config.json`` is read and accepted (`read_adapter_config`: LoRA, no custom code)."""
        if remote.config is None and _is_adapter(remote):
            read_adapter_config(Path(self._download(remote, "adapter_config.json")).parent, remote.repo_id)
            remote.config = {}
        if remote.config is None:
            if "config.json" not in remote.files:
                raise UnsupportedModelError(f"{remote.repo_id} has no config.json")
            remote.config = read_config(Path(self._download(remote, "config.json")), remote.repo_id)
        return remote.config

    def _download(self, remote: RemoteModel, filename: str) -> str:
        from huggingface_hub import hf_hub_download

        with hub_errors(remote.repo_id, self.endpoint):
            return hf_hub_download(remote.repo_id, filename, revision=remote.sha, endpoint=self.endpoint,
                                   cache_dir=self.cache_dir)

    def load_header(self, remote: RemoteModel) -> dict[str, TensorInfo]:
        """Tensor names, shapes and dtypes from range reads of the safetensors headers (an adapter's
        ``adapter_model.safetensors``, which the Hub's model-weights lookup does not cover, file by file)."""
        if remote.header is None:
            with hub_errors(remote.repo_id, self.endpoint):
                if _is_adapter(remote):
                    files = {f: with_retries(self.api.parse_safetensors_file_metadata, remote.repo_id, f,
                                             revision=remote.sha)
                             for f in remote.files if f.endswith(".safetensors") and "/" not in f}
                else:
                    files = with_retries(self.api.get_safetensors_metadata, remote.repo_id,
                                         revision=remote.sha).files_metadata
            header = {}
            for fname, fm in files.items():
                for name, t in fm.tensors.items():
                    header[name] = TensorInfo(name, t.dtype, tuple(t.shape), fname)
            remote.header = header
        return remote.header

    def fetch(self, remote: RemoteModel) -> ResolvedModel:
        """Download what a scan needs (safetensors, config, tokenizer, card) at the pinned commit."""
        from huggingface_hub import snapshot_download

        with hub_errors(remote.repo_id, self.endpoint):
            path = snapshot_download(remote.repo_id, revision=remote.sha, allow_patterns=ALLOW_PATTERNS,
                                     endpoint=self.endpoint, cache_dir=self.cache_dir)
        if not config.hf_offline():
            _remember_ref(Path(path), remote.revision or "main", remote.sha)
        return resolve_folder(Path(path), ref=remote.repo_id, repo_id=remote.repo_id, revision=remote.revision,
                              sha=remote.sha)

    def list_author(self, author: str, pipeline_tag: str | None = None, limit: int = 10_000) -> list[str]:
        with hub_errors(author, self.endpoint):
            return with_retries(lambda: [m.id for m in self.api.list_models(author=author, pipeline_tag=pipeline_tag,
                                                                            limit=limit)])

    def list_finetunes(self, base: str, pipeline_tag: str | None = "text-classification", limit: int = 50,
                       relation: str = "finetune") -> list[RemoteModel]:
        with hub_errors(base, self.endpoint):
            models = with_retries(lambda: list(self.api.list_models(
                filter=f"base_model:{relation}:{base}", pipeline_tag=pipeline_tag, sort="downloads", limit=limit,
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

    def fetch_base(self, ref: str) -> ResolvedModel:
        """A base model's weights and config at its current commit (no tokenizer or task head needed)."""
        from huggingface_hub import snapshot_download

        remote = self.describe(ref, headers=False)
        with hub_errors(ref, self.endpoint):
            path = Path(snapshot_download(ref, revision=remote.sha, allow_patterns=["*.safetensors", "*.json"],
                                          endpoint=self.endpoint, cache_dir=self.cache_dir))
        return base_folder(path, ref, repo_id=ref, sha=remote.sha)
