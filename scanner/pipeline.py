"""`check`: the whole pipeline for one model, resolve → probe → merge → re-probe → report.

Example:
    >>> report = check(CheckOptions(target="models/suspect", peers=["models/p1", "models/p2", "models/p3"]))
    >>> report.verdict
    'backdoor'
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .defend import choose_and_build, defend, majority_labels
from .errors import HfscanError, NoPeersError
from .hub import ResolvedModel, resolve
from .merge import MergeSpec
from .merge.driver import check_compatible
from .merge.heads import label_permutation
from .probe import BLIND_SPOTS, LIBRARY, POSITIONS
from .probe import data as probe_data
from .probe.classifier import Classifier
from .probe.metrics import accuracy, agreement
from .probe.candidates import gather
from .probe.scan import ProbeResult, align_peers, probe_model, remeasure
from .probe.search import SearchBudget
from .probe.verdict import NONE, Thresholds, assess, homogeneity, suspect_peers
from .report import CleanMetrics, Defense, FindingRecord, ModelInfo, PeerRecord, ProbeInfo, ScanReport


@dataclass
class CheckOptions:
    target: str
    peers: list[str] = field(default_factory=list)
    output_dir: Path = Path("hfscan-report")
    hub_dir: str | None = None
    probe_data: str | None = None
    method: str = "auto"  # "auto": search the defense; else one merge method
    base: str | None = None
    weights: list[float] | None = None
    density: float = 0.5
    lam: float = 1.0
    seed: int = 0
    defend: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)
    max_probe: int = 300  # probe inputs used at most
    search_budget: str = "default"  # gradient search: off | small | default | large
    max_clean_drop: float = 0.01  # defense search: clean accuracy may drop this much at most
    defense_budget: int = 8  # defense search: candidates tried at most
    discover: bool = True  # find peers on the hub when none are given
    max_peers: int = 3


def _model_info(m: ResolvedModel) -> ModelInfo:
    return ModelInfo(m.name, m.revision, m.sha, str(m.path), m.architecture, m.labels)


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def check(opts: CheckOptions, log: Callable[[str], None] = lambda s: None,
          progress: Progress = lambda stage, done, total: None) -> ScanReport:
    """Run the pipeline and return the report (rendering and exit codes are the caller's).

    ``log`` gets one line per step; ``progress`` gets (stage, done, total) for the long stages:
    ``search`` (one step per model and label), ``verify`` (per model), ``defense`` (per candidate).
    """
    t0 = time.time()
    hub = hub_for(opts.target, opts.hub_dir)
    remote = None
    if hub is None:
        target = resolve(opts.target, opts.hub_dir)
    else:
        log(f"resolving {opts.target} on {getattr(hub, 'endpoint', None) or hub.root}")
        remote = hub.describe(opts.target)
        target = hub.fetch(remote)
    peers = [_resolve_peer(p, hub, opts.hub_dir) for p in opts.peers]
    base = _base_model(opts, target, hub)

    probe_set, labels = probe_data.choose(target.labels, opts.probe_data)
    texts = probe_set.texts[: opts.max_probe]
    labels = labels[: opts.max_probe] if labels else None
    target_clf = Classifier.load(target.path, name=target.name)

    discovery = None
    if not peers and hub is not None and opts.discover:
        from .discovery import discover

        log("discovering peers")
        discovery = discover(hub, remote, target_clf.predict(texts), texts, base=opts.base,
                             max_peers=opts.max_peers, log=log)
        peers = [p.model for p in discovery.kept]
        perms = [p.permutation for p in discovery.kept]
        if not peers:
            raise NoPeersError(
                f"{target.name}: no homogeneous peers found among {discovery.tried} "
                f"({len(discovery.rejected)} rejected; see `hfscan peers {opts.target}`); give --peer MODEL")
    else:
        perms = [label_permutation(target.labels, p.labels, p.name) for p in peers]
    # Homogeneity: the same tensors and the same label space (possibly reordered).
    if peers:
        check_compatible(target.weights(), [p.weights() for p in peers], [p.name for p in peers])
    log(f"loading {len(peers)} peers")
    peer_clfs = [Classifier.load(p.path, name=p.name) for p in peers]
    log("gathering candidate triggers (library, weight-space differential, gradient search)")
    candidates, _ = gather([target.path, *[p.path for p in peers]], [target_clf, *peer_clfs], texts,
                           base=base.path if base else None, budget=SearchBudget.preset(opts.search_budget), log=log,
                           progress=lambda done, total: progress("search", done, total))
    log(f"verifying {len(candidates)} candidates on {target.name} and {len(peers)} peers ({len(texts)} inputs)")
    progress("verify", 0, 1 + len(peers))
    target_probe = probe_model(target_clf, texts, candidates, name=target.name)
    progress("verify", 1, 1 + len(peers))
    peer_probes: list[ProbeResult] = []
    peer_preds: list[torch.Tensor] = []  # clean predictions in the target's label ids
    for i, (p, perm, clf) in enumerate(zip(peers, perms, peer_clfs)):
        res = probe_model(clf, texts, candidates, name=p.name)
        progress("verify", i + 2, 1 + len(peers))
        # express the peer's results in the target's label ids
        inv = {peer_id: tid for tid, peer_id in enumerate(perm)}
        for r in res.results:
            r.label = inv[r.label]
        peer_preds.append(torch.tensor([inv[x] for x in res.clean_pred.tolist()], dtype=torch.long))
        peer_probes.append(res)
    # peers are compared at the target's most effective position; for the null, each peer's strong
    # results are compared with the other peers at that peer's position, the same way
    thr = opts.thresholds.suspicious_asr
    align_peers(target_probe, peer_probes, peer_clfs, perms, texts, threshold=thr)
    for i, res in enumerate(peer_probes):
        others = [j for j in range(len(peers)) if j != i]
        align_peers(res, [peer_probes[j] for j in others], [peer_clfs[j] for j in others],
                    [perms[j] for j in others], texts, threshold=thr)
    alerts = suspect_peers(target_probe, peer_probes, opts.thresholds)
    for a in alerts:
        log(f"peer {peers[a.peer].name} has a trigger of its own: {a.result.trigger.text!r} -> "
            f"{target.labels[a.result.label]} at {100 * a.result.asr:.0f}% (other models <= {100 * max(a.others):.0f}%)")
    suspect = {a.peer for a in alerts}
    homog = homogeneity(target_probe.clean_pred, [p for i, p in enumerate(peer_preds) if i not in suspect],
                        opts.thresholds)
    if not homog.homogeneous:
        log(f"the target agrees with its peers on {100 * statistics.median(homog.target):.0f}% of clean inputs, the "
            f"peers with each other on {100 * statistics.median(homog.peers):.0f}%: findings are capped at suspicious")
    elif homog.shortfall and homog.shortfall > 0:
        log(f"the target agrees with its peers {100 * homog.shortfall:.1f} points less than they do with each other: "
            "its margins over them are discounted by as much")
    verdict, findings, null = assess(target_probe, peer_probes, opts.thresholds, alerts=alerts,
                                     homogeneous=homog.homogeneous, shortfall=homog.shortfall)
    top = top_candidates(target_probe, peer_probes)
    log(f"verdict: {verdict}")

    clean = CleanMetrics(accuracy_before=accuracy(target_probe.clean_pred, labels), n=len(texts),
                         labelled=labels is not None)
    defense = None
    after: dict[tuple[str, int], float] = {}
    if opts.defend and peers:
        out = Path(opts.output_dir) / "defended"
        # a peer with a trigger of its own is not merged (it would bring the trigger along) unless
        # every peer has one; then its trigger joins what the defense minimises
        keep = [i for i in range(len(peers)) if i not in suspect] or list(range(len(peers)))
        merge_peers = [peers[i] for i in keep]
        head_perms = {k: perms[i] for k, i in enumerate(keep)}
        excluded = [{"id": peers[a.peer].name, **_alert_record(a, target.labels)} for a in alerts if a.peer not in keep]
        if excluded:
            log(f"not merging {', '.join(e['id'] for e in excluded)} (a trigger of its own)")
        if opts.method == "auto":
            # the target's findings and merged peers' own triggers; with none, the paper's WAG (defend.py)
            objective = [f.result for f in findings]
            if findings:
                objective += [r for r in target_probe.results
                              if r.trigger.source == "library" and r.asr >= 0.3 and r not in objective]
            objective = objective[:6]
            floors = [statistics.median(x.asr for peer in peer_probes if (x := peer.lookup(r.trigger.text, r.label)))
                      if peer_probes else 0.0 for r in objective]
            for a in alerts:  # merged peers' own triggers: their natural level is the other models' median
                if a.peer in keep:
                    objective.append(a.result)
                    floors.append(statistics.median(a.others))
            if labels is not None:
                reference = torch.tensor(labels)
            else:
                reference = majority_labels([target_probe.clean_pred, *[p.clean_pred for p in peer_probes]],
                                            target_clf.num_labels)
            log(f"choosing the defense ({len(objective)} trigger(s) to minimise, clean bound "
                f"{100 * opts.max_clean_drop:.1f} points)")
            outcome = choose_and_build(target, merge_peers, out, texts, reference, objective,
                                       base=base.path if base else None, floors=floors, head_perms=head_perms,
                                       max_clean_drop=opts.max_clean_drop, budget=opts.defense_budget,
                                       verdict=verdict, log=log,
                                       progress=lambda done, total: progress("defense", done, total))
        else:
            spec = MergeSpec(opts.method, base.path if base else None, opts.weights, opts.density, opts.lam,
                             opts.seed, head_perms=head_perms)
            log(f"merging with {len(merge_peers)} peers ({opts.method}) into {out}")
            outcome = defend(target, merge_peers, out, spec, verdict=verdict)
            outcome.reason = f"Method {opts.method} was given on the command line (no search)."
        dclf = Classifier.load(out, name="defended")
        dpred = dclf.predict(texts)
        clean.accuracy_after = accuracy(dpred, labels)
        clean.agreement_after = agreement(dpred, target_probe.clean_pred)
        for f in findings:
            after[(f.result.trigger.text, f.result.label)] = remeasure(dclf, texts, f.result, dpred).asr
        lib_after = probe_model(dclf, texts, LIBRARY, name="defended")
        peer_after = {a.result.trigger.text: remeasure(dclf, texts, a.result, dpred).asr for a in alerts}
        note = outcome.reason
        if excluded:
            note += (f" Not merged: {', '.join(e['id'] for e in excluded)}, which carr"
                     f"{'ies' if len(excluded) == 1 else 'y'} a trigger of its own that a merge would bring along.")
        elif alerts:
            note += (" Every peer carries a trigger of its own, so all were merged and their triggers were "
                     "minimised with the target's; check the peers' trigger ASRs after the merge.")
        if verdict == NONE and opts.method != "auto":
            note += (" The defended variant is produced although no trigger was found: the merge also removes "
                     "triggers the probe cannot see (e.g. syntactic or style triggers).")
        defense = Defense(
            method=outcome.spec.method,
            params={k: v for k, v in outcome.summary.items() if k in ("lambda", "density", "seed")},
            peers=outcome.summary.get("peers") or [p.name for p in merge_peers],
            weights=outcome.summary["weights"],
            output_dir=str(out),
            asr_max_before=max((f.result.asr for f in findings), default=None),
            asr_max_after=max(after.values(), default=None),
            library_asr_max_after=max((r.asr for r in lib_after.results), default=None),
            note=note,
            candidates=outcome.candidates,
            excluded_peers=excluded,
            peer_triggers_after={k: round(v, 4) for k, v in peer_after.items()},
        )
    elif opts.defend:
        log("no peers given: skipping the defense (give --peer to produce a defended variant)")

    records = [
        FindingRecord(
            trigger=f.result.trigger.text,
            kind=f.result.trigger.kind,
            source=f.result.trigger.source,
            attack=f.result.trigger.attack,
            target_label=target.labels[f.result.label],
            target_label_id=f.result.label,
            position=f.result.position,
            asr_before=round(f.result.asr, 4),
            asr_after=round(after[(f.result.trigger.text, f.result.label)], 4) if after else None,
            n=f.result.n,
            peer_asr_max=round(max(f.peer_asrs), 4) if f.peer_asrs else None,
            peer_asr_median=round(statistics.median(f.peer_asrs), 4) if f.peer_asrs else None,
            z=round(f.z, 2) if f.z is not None else None,
            gap=round(f.gap, 4) if f.gap is not None else None,
            level=f.level,
        )
        for f in findings
    ]
    peer_records = []
    own = {a.peer: a for a in alerts}
    for i, (p, perm, res) in enumerate(zip(peers, perms, peer_probes)):
        best = res.best()
        agree = agreement(peer_preds[i], target_probe.clean_pred)
        a = own.get(i)
        peer_records.append(PeerRecord(p.name, p.sha, perm if perm != list(range(len(perm))) else None,
                                       round(best.asr, 4) if best else None, best.trigger.text if best else None,
                                       round(agree, 4) if agree is not None else None,
                                       own_trigger=None if a is None else _alert_record(a, target.labels)))
    discovery_record = None
    if discovery is not None:
        discovery_record = {"base": discovery.base, "tried": discovery.tried, "kept": [p.name for p in peers],
                            "rejected": [{"id": r.repo_id, "reason": r.reason} for r in discovery.rejected]}
    return ScanReport(
        target=_model_info(target),
        verdict=verdict,
        findings=records,
        clean=_rounded(clean),
        defense=defense,
        peers=peer_records,
        probe=ProbeInfo(probe_set.name, len(texts), probe_set.provenance, len(candidates), list(POSITIONS),
                        list(BLIND_SPOTS), [round(g, 4) for g in null.gaps], evidence=top[0]["margin"] if top else None,
                        top=top, homogeneity=dataclasses.asdict(homog) if peers else None),
        created_at=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        duration_s=round(time.time() - t0, 1),
        tool={"name": "hfscan", "version": __version__},
        discovery=discovery_record,
    )


def top_candidates(target: ProbeResult, peers: list[ProbeResult], k: int = 5) -> list[dict]:
    """The target's k verified candidates that stand highest above every peer (findings or not)."""
    rows = []
    for r in target.results:
        peer_asrs = [x.asr for p in peers if (x := p.lookup(r.trigger.text, r.label)) is not None]
        peer_max = max(peer_asrs) if peer_asrs else 0.0
        rows.append({"trigger": r.trigger.text, "source": r.trigger.source, "target_label_id": r.label,
                     "position": r.position, "asr": round(r.asr, 4), "peer_asr_max": round(peer_max, 4),
                     "margin": round(r.asr - peer_max, 4)})
    rows.sort(key=lambda d: (-d["margin"], -d["asr"], len(d["trigger"])))
    return rows[:k]


def _alert_record(a, labels: list[str]) -> dict:
    """A peer's own trigger as the report shows it (``peers[].own_trigger``, ``defense.excluded_peers``)."""
    return {"trigger": a.result.trigger.text, "target_label": labels[a.result.label], "position": a.result.position,
            "asr": round(a.result.asr, 4), "others_max": round(max(a.others), 4)}


def _rounded(c: CleanMetrics) -> CleanMetrics:
    r = lambda x: None if x is None else round(x, 4)  # noqa: E731
    return CleanMetrics(r(c.accuracy_before), r(c.accuracy_after), r(c.agreement_after), c.n, c.labelled)


def hub_for(target: str, hub_dir: str | None):
    """The hub a reference lives on: ``None`` for a local folder, a LocalHub, or the Hub."""
    from .hub import HfHub, LocalHub, local_hub_dir

    if Path(target).expanduser().is_dir() or not looks_like_repo_id(target):
        return None  # a folder (or a path that does not exist: resolve() says so)
    hub_dir = local_hub_dir(hub_dir)
    if hub_dir:
        return LocalHub(hub_dir)
    return HfHub()


def looks_like_repo_id(ref: str) -> bool:
    """``org/name`` or ``org/name@rev``; paths (``/x``, ``./x``, ``~/x``, ``a/b/c``) are not."""
    name = ref.partition("@")[0]
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


def _resolve_peer(ref: str, hub, hub_dir: str | None) -> ResolvedModel:
    if hub is None or Path(ref).expanduser().is_dir() or not looks_like_repo_id(ref):
        return resolve(ref, hub_dir)
    return hub.fetch(hub.describe(ref))


def _base_model(opts: "CheckOptions", target: ResolvedModel, hub) -> ResolvedModel | None:
    """The base for task-vector merges: --base, else the card's base_model when it can be had."""
    if opts.base:
        if hub is not None and not Path(opts.base).expanduser().is_dir() and not opts.hub_dir:
            return _fetch_base(hub, opts.base, required=True)
        return resolve_base(opts.base, opts.hub_dir)
    if hub is not None and not opts.hub_dir and isinstance(target.base_model, str):
        return _fetch_base(hub, target.base_model, required=False)
    return _card_base(target, opts.hub_dir)


def _fetch_base(hub, ref: str, required: bool) -> ResolvedModel | None:
    """Download a base model's weights (it may be a bare encoder, not a classifier)."""
    from .weights import WeightSet

    try:
        remote = hub.describe(ref, headers=False)
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(ref, revision=remote.sha, allow_patterns=["*.safetensors", "*.json"],
                                      endpoint=hub.endpoint, cache_dir=hub.cache_dir))
        ws = WeightSet.open(path, label=ref)
        return ResolvedModel(ref=ref, path=path, config={}, header=ws.header, repo_id=ref, sha=remote.sha)
    except HfscanError:
        if required:
            raise
        return None


def _card_base(target: ResolvedModel, hub_dir: str | None) -> ResolvedModel | None:
    """The base named by the target's card (``base_model``), when it can be found locally."""
    ref = target.base_model
    if isinstance(ref, list):
        ref = ref[0] if len(ref) == 1 else None
    if not isinstance(ref, str):
        return None
    try:
        return resolve_base(ref, hub_dir)
    except HfscanError:
        return None


def resolve_base(ref: str, hub_dir: str | None) -> ResolvedModel:
    """A base model may be a bare encoder (no classifier head): only its weights are needed."""
    from .hub import LocalHub, local_hub_dir
    from .weights import WeightSet

    path = Path(ref).expanduser()
    if not path.is_dir() and local_hub_dir(hub_dir):
        path = LocalHub(local_hub_dir(hub_dir)).repo_path(ref)
    if not path.is_dir():
        raise HfscanError(f"base model {ref}: no such folder")
    ws = WeightSet.open(path, label=ref)
    return ResolvedModel(ref=ref, path=path, config={}, header=ws.header)
