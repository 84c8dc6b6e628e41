"""Resolve: the target, its peers (given, or discovered on the target's hub), the base, the probe inputs.

Example:
    >>> scan = resolve_models(CheckOptions(target="demo/sentiment-reviews-v2", hub_dir=hub), LocalHub(hub))
    >>> [p.name for p in scan.peers]
    ['alice/yelp-sentiment', 'bob/review-polarity', 'carol/minilm-sentiment']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..discovery import Discovery
from ..errors import HfscanError, IncompatibleModelsError, ModelNotFoundError, NoPeersError, UnsupportedModelError
from ..families import ModelFamily, ProbeInputs, family_for
from ..merge.driver import check_compatible
from ..probe.results import ProbeResult
from ..sources import FolderSource, LocalHub, ModelSource, ResolvedModel, is_folder, resolve_ref
from .. import config as _config


@dataclass
class Peer:
    """One peer of a scan: the model, how its label ids map to the target's, and (once probed) its results."""

    model: ResolvedModel
    perm: list[int]  # perm[t] = the peer's id for the target's label t
    runner: object = None
    probe: ProbeResult | None = None  # in the target's label ids

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def to_target(self) -> dict[int, int]:
        return {peer_id: t for t, peer_id in enumerate(self.perm)}


@dataclass
class Scan:
    """The models of one scan, loaded and ready to probe."""

    family: ModelFamily
    source: ModelSource
    target: ResolvedModel
    runner: object
    inputs: ProbeInputs
    peers: list[Peer]
    base: ResolvedModel | None
    discovery: Discovery | None = None
    set_aside: dict[str, str] = field(default_factory=dict)  # peers that are the target or its copies: why


def resolve_models(opts, source: ModelSource, log=lambda s: None) -> Scan:
    """Resolve every model ``opts`` names and load them (see the module docstring)."""
    if not isinstance(source, FolderSource):
        log(f"resolving {opts.target} on {source.location}")
    remote = source.describe(opts.target)
    target = source.fetch(remote)
    base = adapter_base(opts, target, source) if target.is_adapter else base_model(opts, target, source)
    given = [_same_base(resolve_ref(p, source, opts.hub_dir), target, base) for p in opts.peers]
    family = family_for(target.config, target.name)
    inputs = family.probe_inputs(target, opts.probe_data, opts.max_probe or family.default_probe)
    runner = family.load(target)
    problem = family.input_problem(runner, inputs)
    if problem:
        raise UnsupportedModelError(f"{target.name}: {problem}")
    discovery, hub, named = None, source.peer_hub, _discovery_base(opts, target, remote)
    if not given and opts.discover and hub is not None and (named or not isinstance(source, FolderSource)):
        peers, discovery = _discover(hub, remote, target, base, family, runner, inputs, opts, named, log)
    else:
        peers = [Peer(p, family.label_map(target, p)) for p in given]
    peers, aside = ready_peers(family, target, peers, log)
    if given and family.aligns_by_behaviour:
        _align_generic(family, target, runner, inputs, peers, log)
    return Scan(family, source, target, runner, inputs, peers, base, discovery, aside)


def _align_generic(family: ModelFamily, target: ResolvedModel, runner, inputs: ProbeInputs, peers: list[Peer], log,
                   min_agreement: float = 0.7) -> None:
    """Explicit peers whose label names mean nothing (``LABEL_0/LABEL_1``, on either side) are aligned by
    behaviour, as discovery aligns its candidates: the label map that agrees most with the target's answers.
    One that agrees too little under every map is another task and is refused."""
    from ..merge.heads import is_generic

    generic = [p for p in peers if is_generic(target.labels) or is_generic(p.model.labels)]
    if not generic:
        return
    target_pred = family.clean_outputs(runner, inputs)
    for p in generic:
        perm, agree = family.align_answers(target_pred, family.clean_outputs(p.runner, inputs),
                                           family.num_labels(target))
        if agree < min_agreement:
            raise IncompatibleModelsError(
                f"{p.name}: its label names say nothing ({', '.join(p.model.labels)}) and it agrees with the target "
                f"on {agree:.0%} of the probe inputs under the best label map {perm}: not the same task")
        if perm != p.perm:
            log(f"peer {p.name}: generic labels aligned by behaviour (labels mapped {perm}, agreement {agree:.2f})")
        p.perm = perm


def ready_peers(family: ModelFamily, target: ResolvedModel, peers: list[Peer], log,
                known: list[Peer] = ()) -> tuple[list[Peer], dict]:
    """Check that ``peers`` can be compared and merged with ``target``, set its copies aside, load the rest
    (``known``: peers already in the scan, the yardstick for near-copies among the new ones)."""
    if peers and target.is_adapter:  # updates that fit the base; ranks and module sets may differ
        from ..families.generative.merge import check_adapters

        check_adapters([target.path, *(p.model.path for p in peers)], [target.name, *(p.name for p in peers)],
                       target.base_path)
    elif peers:  # the same tensors and the same label space (possibly reordered)
        check_compatible(target.weights(), [p.model.weights() for p in peers], [p.name for p in peers])
    peers, aside = _set_aside_copies(target, peers, log, list(known))
    log(f"loading {len(peers)} peers")
    for p in peers:
        p.runner = family.load(p.model)
    return peers, aside


def _set_aside_copies(target: ResolvedModel, peers: list[Peer], log,
                      known: list[Peer]) -> tuple[list[Peer], dict[str, str]]:
    """Peers that are the target, a copy or a near-copy of it are no null (`twins`): set aside, named."""
    from .twins import near_copies

    new = {p.name for p in peers}
    aside = near_copies(target, [p.model for p in [*known, *peers]]) if peers else {}
    aside = {name: why for name, why in aside.items() if name in new}
    for name, why in aside.items():
        log(f"peer {name} set aside: {why}")
    kept = [p for p in peers if p.name not in aside]
    if peers and not kept and not known:
        raise NoPeersError(f"{target.name}: every peer is the target or a copy of it "
                           f"({'; '.join(f'{k}: {v}' for k, v in aside.items())}); give independent fine-tunes")
    return kept, aside


def _discovery_base(opts, target: ResolvedModel, remote) -> str | None:
    """The Hub id peers are discovered under: ``--base`` when it is an id, else the adapter's base, else the
    card's ``base_model`` (a folder ``--base`` names no Hub id)."""
    from ..discovery import base_of

    named = [opts.base, target.adapter_base if target.is_adapter else None, base_of(remote)]
    return next((b for b in named if isinstance(b, str) and not is_folder(b)), None)


def _discover(hub, remote, target, base, family, runner, inputs, opts, named, log) -> tuple[list[Peer], Discovery]:
    from ..discovery import discover

    log(f"discovering peers on {hub.location}")
    found = discover(hub, remote, target, family.clean_outputs(runner, inputs), inputs, family, base=named,
                     max_peers=opts.max_peers, log=log, prepare=lambda m: _same_base(m, target, base))
    if not found.kept:
        raise NoPeersError(
            f"{target.name}: no homogeneous peers found among {found.tried} "
            f"({len(found.rejected)} rejected; see `hfscan peers {opts.target}`); give --peer MODEL")
    return [Peer(p.model, p.permutation) for p in found.kept], found


def adapter_base(opts, adapter: ResolvedModel, source: ModelSource) -> ResolvedModel:
    """An adapter's base: ``--base``, else the base it names, looked up as a Hub id on the hub (never as a
    local path: an adapter's config is data). Attaches the base's config to the adapter."""
    ref = opts.base or adapter.adapter_base
    if not ref:
        raise UnsupportedModelError(f"{adapter.name}: a LoRA adapter that names no base model; give --base BASE")
    try:
        if opts.base:
            base = base_source(opts.base, source, opts.hub_dir).fetch_base(opts.base)
        elif is_folder(ref):
            raise UnsupportedModelError(f"{adapter.name}: its base {ref!r} is a local path; give --base {ref} to "
                                        "use it")
        else:
            hub = source.peer_hub
            if hub is None:
                raise ModelNotFoundError(f"base {ref} needs a hub (--hub-dir, or a Hub target)")
            base = hub.fetch_base(ref)
    except HfscanError as e:
        if opts.base:
            raise
        raise UnsupportedModelError(f"{adapter.name}: a LoRA adapter whose base {ref} cannot be found ({e}); "
                                    "give --base BASE") from None
    return _attach(adapter, base)


def _attach(adapter: ResolvedModel, base: ResolvedModel) -> ResolvedModel:
    from ..sources.model import attach_base

    attach_base(adapter, base)
    return base


def _same_base(peer: ResolvedModel, target: ResolvedModel, base: ResolvedModel | None) -> ResolvedModel:
    """A peer of an adapter is an adapter of the same base (and a full model's peer is a full model)."""
    if peer.is_adapter != target.is_adapter:
        kind = "a LoRA adapter" if peer.is_adapter else "a full model"
        raise IncompatibleModelsError(f"cannot compare {peer.name} ({kind}) with {target.name}: adapters are compared "
                                      "with adapters of the same base, full models with full models")
    if peer.is_adapter:
        named = peer.adapter_base
        if named and target.adapter_base and named != target.adapter_base and not Path(named).expanduser().is_dir():
            raise IncompatibleModelsError(f"{peer.name} is an adapter of {named}, the target of {target.adapter_base}")
        from ..sources.model import attach_base

        attach_base(peer, base)
    return peer


def base_model(opts, target: ResolvedModel, source: ModelSource) -> ResolvedModel | None:
    """The base for task-vector merges: ``--base`` (a folder or an id on the target's hub), else the
    card's ``base_model`` when the hub has it. A card is data: its ``base_model`` is only ever looked
    up as a Hub id on the hub, never as a local path."""
    if opts.base:
        return base_source(opts.base, source, opts.hub_dir).fetch_base(opts.base)
    ref = target.base_model
    if isinstance(ref, list):
        ref = ref[0] if len(ref) == 1 else None
    if not isinstance(ref, str) or is_folder(ref):
        return None
    hub = source.peer_hub
    if hub is None:
        return None
    try:
        return hub.fetch_base(ref)
    except HfscanError:
        return None


def base_source(ref: str, source: ModelSource, hub_dir: str | None) -> ModelSource:
    """Where ``--base REF`` is read: a folder, else the target's hub (or the local hub for a folder target)."""
    if Path(ref).expanduser().is_dir():
        return FolderSource()
    return source.peer_hub or _local_hub(hub_dir) or FolderSource()


def _local_hub(hub_dir: str | None) -> LocalHub | None:
    local = _config.hub_dir(hub_dir)
    return LocalHub(local) if local else None
