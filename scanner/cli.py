"""The ``hfscan`` command line.

Exit codes (``check``; ``audit`` likewise for its worst model):

    0  no trigger found (or a finding below ``--fail-on``)
    1  backdoor (or, with ``--fail-on suspicious``, the default, a suspicious finding)
    2  the scan could not run: bad input, unreadable model, network (one line on stderr, never a traceback;
       ``HFSCAN_DEBUG=1`` shows one)
    3  usage error: an unknown option or a bad value (one line on stderr)
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import click

from . import __version__, config
from .errors import HfscanError
from .report.escape import terminal

EXIT_ERROR = 2
EXIT_USAGE = 3
FAIL_ON = ("backdoor", "suspicious", "never")


def _fail(msg: str) -> None:
    click.echo(f"hfscan: error: {terminal(msg)}", err=True)
    sys.exit(EXIT_ERROR)


def guarded(fn):
    """Turn every failure into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HfscanError as e:
            if config.debug():
                raise
            _fail(str(e).splitlines()[0] if str(e) else e.__class__.__name__)
        except KeyboardInterrupt:
            click.echo("hfscan: interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # an unexpected failure still gets one line, not a traceback
            if config.debug():
                raise
            _fail(f"internal error: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  "(set HFSCAN_DEBUG=1 for a traceback)")

    return wrapper


def _floats(value: str | None) -> list[float] | None:
    if not value:
        return None
    try:
        return [float(x) for x in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


def _formats(value: str) -> list[str]:
    from .report import FORMATS

    fmts = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise click.BadParameter(f"unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    return fmts


class _Group(click.Group):
    """click's group, with its usage errors as one ``hfscan: usage error:`` line and exit code 3."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
            click.echo(f"hfscan: usage error: {terminal(e.format_message())}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as e:
            _fail(e.format_message())
        except click.Abort:
            click.echo("hfscan: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hfscan")
@click.option("--device", envvar="HFSCAN_DEVICE", default="auto", show_default=True,
              help="Where models run: auto (CUDA when available), cpu, cuda or cuda:N. Merging always "
                   "streams on the CPU.")
@click.option("--config", "config_file", envvar="HFSCAN_CONFIG", type=click.Path(dir_okay=False),
              help="Settings file (default: ./hfscan.toml, else [tool.hfscan] in ./pyproject.toml).")
@click.pass_context
def main(ctx: click.Context, device: str, config_file: str | None) -> None:
    """Find and defuse backdoors in fine-tuned Hugging Face models: text classifiers, causal LMs, LoRA adapters.

    Options people repeat can live in hfscan.toml (or [tool.hfscan] in pyproject.toml): top-level keys for every
    command, a [check] table for one; the command line wins."""
    from . import settings

    table, source = settings.load(config_file)
    if table:
        ctx.default_map = settings.defaults_for(ctx.command, table, str(source))
    config.use_device(device)
    ctx.call_on_close(lambda: config.use_device(None))  # one invocation's choice (matters when embedded)
    _exit_cleanly_on_signals()


def _exit_cleanly_on_signals() -> None:
    """SIGTERM and SIGHUP (what CI runners and service managers send) unwind like Ctrl-C: every
    ``finally`` runs, so no temporary folder or half-written output is left behind."""
    import signal

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, stop)
        except (ValueError, OSError):  # not the main thread (e.g. click's test runner in a thread)
            pass


def merge_options(fn, auto: bool = False):
    from .merge import names

    opts = [
        click.option("--method", type=click.Choice((["auto"] if auto else []) + names()), default="auto" if auto else "wag",
                     show_default=True,
                     help="Merge method" + ("; auto searches methods, weights and peers for the lowest ASR within "
                                            "the clean bound." if auto else ".")),
        click.option("--base", help="Base model (folder) for task-vector methods (task_arithmetic, ties, dare_*)."),
        click.option("--weights", help="Comma-separated weights, target first (default: the method's)."),
        click.option("--density", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
                     help="TIES/DARE: share of each task vector kept."),
        click.option("--lambda", "lam", type=float, default=1.0, show_default=True, help="Task-vector scale."),
        click.option("--seed", type=int, default=0, show_default=True, help="DARE's random seed."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


@main.command()
@click.argument("target")
@click.option("--peer", "peers", multiple=True, help="A peer model (folder or ORG/NAME); repeat for each.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), default=Path("hfscan-report"),
              show_default=True, help="Folder for the reports and the defended model.")
@click.option("--format", "formats", default="json,md", show_default=True,
              help="Report formats, comma-separated: json, md, sarif, html, summary (GitHub job summary), "
                   "card (model-card section).")
@click.option("--sarif-root", default=None,
              help="The model's folder relative to the repository root, for SARIF locations "
                   "(default: TARGET's path relative to the current folder when it is inside it).")
@click.option("--hub-dir", envvar="HFSCAN_HUB_DIR", help="A local hub folder (ORG/NAME/ repos).")
@click.option("--probe-data", type=click.Path(),
              help="TSV of probe inputs: sentence<TAB>label, or for generative models instruction<TAB>reference answer "
                   "(the second column optional).")
@click.option("--search-budget", type=click.Choice(["off", "small", "default", "large"]), default="default",
              show_default=True, help="Gradient-guided trigger search effort.")
@functools.partial(merge_options, auto=True)
@click.option("--max-clean-drop", type=click.FloatRange(0, 1), default=None,
              help="Defense search: largest clean-behaviour drop allowed. Classifiers (default 0.01 = 1 point): "
                   "accuracy on the probe and at a class mix skewed 3:1 toward any one class (class recall changes "
                   "within sampling noise not counted). Generative models (default 0.05): the share of clean "
                   "prompts answered like the consensus of the target and its peers (beyond sampling noise), and "
                   "the relative rise of those answers' loss (0.05 = 5%).")
@click.option("--defense-budget", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Defense search: most candidate merges tried.")
@click.option("--max-peers", type=click.IntRange(1, 16), default=3, show_default=True,
              help="Peers discovered at most (when no --peer is given).")
@click.option("--no-defend", is_flag=True, help="Probe only; do not build a defended variant.")
@click.option("--open-pr", is_flag=True, help="Open (or update) a PR on the Hub repo with the defended weights "
                                                "and the report (dry run without --yes).")
@click.option("--pr-mode", type=click.Choice(["variant", "report-only"]), default="variant", show_default=True)
@click.option("--push-variant", metavar="REPO_ID", help="Upload the defended variant to this Hub repo (dry run "
                                                         "without --yes).")
@click.option("--github-issue", metavar="OWNER/REPO", help="Create or update one GitHub issue for this model "
                                                              "(GITHUB_TOKEN; dry run without --yes).")
@click.option("--yes", is_flag=True, help="Really send what --open-pr / --push-variant / --github-issue would "
                                          "(or HFSCAN_PUBLISH=1).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the verdict line.")
@click.option("--json", "as_json", is_flag=True, help="Write the report JSON to stdout and nothing else there (the "
                                                       "summary goes to stderr).")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default="suspicious", show_default=True,
              help="The least severe verdict that exits with code 1.")
@guarded
def check(target, peers, output, formats, sarif_root, hub_dir, probe_data, search_budget, method, base, weights,
          density, lam, seed, max_clean_drop, defense_budget, max_peers, no_defend, open_pr, pr_mode, push_variant,
          github_issue, yes, quiet, as_json, fail_on):
    """Probe TARGET (a folder, or a Hub id: ORG/NAME[@REV]) for backdoor triggers, merge it with its peers,
    re-probe, report.

    Exit code 0: no trigger found (or below --fail-on); 1: a verdict at or above --fail-on; 2: the scan could
    not run; 3: usage error.
    """
    from .pipeline import CheckOptions, check as run_check
    from .report import write_reports
    from .sources import is_folder

    fmts = _formats(formats)
    _check_outputs(output, no_defend)
    if (open_pr or push_variant) and is_folder(target):
        raise HfscanError("--open-pr and --push-variant need a model on the Hub (org/name), not a folder")
    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    log = _Console(quiet=quiet)
    opts = CheckOptions(target=target, peers=list(peers), output_dir=output, hub_dir=hub_dir, probe_data=probe_data,
                        method=method, base=base, weights=_floats(weights), density=density, lam=lam, seed=seed,
                        defend=not no_defend, search_budget=search_budget, max_clean_drop=max_clean_drop,
                        defense_budget=defense_budget, max_peers=max_peers)
    report = run_check(opts, log=log, progress=log.progress)
    say = functools.partial(click.echo, err=as_json)  # with --json, stdout holds the JSON alone
    if open_pr or push_variant:
        report.publish = _publish(report, target, hub_dir, open_pr, pr_mode, push_variant, yes, log, say)
    if github_issue:
        from dataclasses import asdict

        from .publish import github_issue as gh_issue, should_send
        from .report.render import render as render_fmt

        res = gh_issue(github_issue, report.target.id, f"hfscan: {report.target.id}: {report.verdict.replace('_', ' ')}",
                       render_fmt(report, "summary"), should_send(yes), log=log)
        report.publish = {**(report.publish or {}), "github_issue": {k: v for k, v in asdict(res).items()
                                                                     if k != "description"}}
        say(f"GitHub issue ({res.action}): {res.url or 'not sent'}")
    written = write_reports(report, output, fmts, _sarif_root(target, sarif_root))
    if not quiet:
        say(summary_table(report))
        for fmt, path in written.items():
            say(f"{fmt:>5}: {path}")
    else:
        say(f"{terminal(report.target.id)}: {report.verdict}")
    if as_json:
        click.echo(report.to_json(), nl=False)
    sys.exit(exit_code(report.verdict, fail_on))


def exit_code(verdict: str, fail_on: str) -> int:
    """1 when ``verdict`` is at least as severe as ``fail_on``, else 0.

    Example:
        >>> exit_code("suspicious", "backdoor"), exit_code("suspicious", "suspicious"), exit_code("backdoor", "never")
        (0, 1, 0)
    """
    severity = {"no_trigger_found": 0, "suspicious": 1, "backdoor": 2}
    return int(fail_on != "never" and severity[str(verdict)] >= severity[fail_on])


def _check_outputs(output: Path, no_defend: bool) -> None:
    """Refuse an output folder that is a file, not writable, or holds a ``defended`` hfscan did not write,
    before the scan starts."""
    from ._fs import check_output_dir, check_replaceable

    check_output_dir(output)
    if not no_defend:
        check_replaceable(Path(output) / "defended")


def _publish(report, target, hub_dir, open_pr, pr_mode, push_variant, yes, log, say=click.echo) -> dict:
    from dataclasses import asdict

    from .publish import publish_pr, push_variant as push, should_send
    from .sources import HfHub, for_target

    hub = for_target(target, hub_dir)
    if not isinstance(hub, HfHub):
        raise HfscanError("--open-pr and --push-variant need a model on the Hub (org/name), not a folder")
    send = should_send(yes)
    defended = Path(report.defense.output_dir) if report.defense else None
    out: dict = {}
    if open_pr:
        res = publish_pr(report, hub, report.target.id, Path(report.target.path), defended, pr_mode, send, log)
        out["pr"] = {k: v for k, v in asdict(res).items() if k not in ("description",)}
        say(f"PR ({res.action}): {res.url or 'not sent'}; files: {', '.join(res.files)}")
        if res.action == "dry-run":
            say(f"--- PR title: {terminal(res.title)}\n{res.description}")
    if push_variant:
        if defended is None:
            raise HfscanError("--push-variant needs a defended variant (do not use --no-defend)")
        res = push(hub, push_variant, defended, send, log=log)
        out["variant"] = asdict(res)
        say(f"variant ({res.action}): {res.url}")
    return out


def _sarif_root(target: str, given: str | None) -> str:
    if given is not None:
        return given
    p = Path(target).expanduser()
    if p.is_dir():
        try:
            rel = p.resolve().relative_to(Path.cwd().resolve())
            return "" if str(rel) == "." else rel.as_posix()
        except ValueError:
            pass
    return ""


class _Console:
    """Timestamped log lines on stderr, and a tqdm progress bar (with its rate and ETA) between them when
    stderr is a terminal; no bar in CI, under ``HF_HUB_DISABLE_PROGRESS_BARS`` or with ``-q``.

    Example:
        >>> con = _Console()
        >>> con.log("probing")            # · [  0.0s] probing
        >>> con.progress("search", 3, 8)  # · search:  38%|███▊      | 3/8 [00:02<00:03, 1.50it/s]
    """

    def __init__(self, bar: bool | None = None, quiet: bool = False):
        self.t0 = time.time()
        self.quiet = quiet
        self.bar = not quiet and (sys.stderr.isatty() and config.progress_bars() if bar is None else bar)
        self._tqdm = None
        self._stage = ""

    def log(self, s: str) -> None:
        if self.quiet:
            return
        line = f"· [{time.time() - self.t0:5.1f}s] {terminal(s)}"
        if self._tqdm is not None:
            self._tqdm.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def progress(self, stage: str, done: int, total: int) -> None:
        if not self.bar or total <= 0:
            return
        from tqdm.auto import tqdm

        if self._tqdm is None or stage != self._stage or total != self._tqdm.total:
            self._close()
            self._tqdm, self._stage = tqdm(total=total, desc=f"· {stage}", file=sys.stderr, leave=False,
                                                mininterval=0), stage
        self._tqdm.update(done - self._tqdm.n)
        if done >= total:
            self._close()

    def _close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    __call__ = log


def summary_table(report) -> str:
    from .report.render import pct

    lines = [f"{terminal(report.target.id)}: {report.verdict.upper().replace('_', ' ')}"]
    if report.findings:
        lines.append(f"  {'trigger':<24} {'label':<12} {'pos':<7} {'ASR':>7} {'after':>7} {'peers':>7}")
        for f in report.findings[:10]:
            lines.append(f"  {terminal(f.trigger[:24]):<24} {terminal(f.target_label[:12]):<12} {f.position:<7} "
                         f"{pct(f.asr_before):>7} "
                         f"{pct(f.asr_after):>7} {pct(f.peer_asr_max):>7}")
    c = report.clean
    lines.append(f"  clean accuracy {pct(c.accuracy_before)} -> {pct(c.accuracy_after)}, "
                 f"agreement after defense {pct(c.agreement_after)}")
    if report.defense:
        lines.append(f"  defended model ({report.defense.method}): {terminal(report.defense.output_dir)}")
    return "\n".join(lines)


@main.command()
@click.argument("target")
@click.option("--hub-dir", envvar="HFSCAN_HUB_DIR", help="A local hub folder (ORG/NAME/ repos).")
@click.option("--base", help="The base model (default: the card's base_model).")
@click.option("--max-peers", type=click.IntRange(1, 16), default=3, show_default=True)
@click.option("--probe-data", type=click.Path(), help="TSV of probe inputs for the behavioural check.")
@guarded
def peers(target, hub_dir, base, max_peers, probe_data):
    """List TARGET's homogeneous peers on the hub, and why every other candidate was rejected."""
    from .discovery import discover
    from .families import family_for
    from .sources import FolderSource, for_target

    hub = for_target(target, hub_dir)
    if isinstance(hub, FolderSource):
        raise click.UsageError("peers needs a hub model id (ORG/NAME), not a folder")
    remote = hub.describe(target)
    model = hub.fetch(remote)
    family = family_for(model.config, model.name)
    inputs = family.probe_inputs(model, probe_data, 300)
    found = discover(hub, remote, model, family.clean_outputs(family.load(model), inputs), inputs, family, base=base,
                     max_peers=max_peers)
    click.echo(f"{target}: base {found.base}; tried {found.tried}")
    for p in found.kept:
        perm = f", labels mapped {p.permutation}" if p.permutation != sorted(p.permutation) else ""
        click.echo(f"  kept      {terminal(p.remote.repo_id)}  (agreement {p.agreement:.2f}, {p.remote.downloads} downloads{perm})")
    for r in found.rejected:
        click.echo(f"  rejected  {terminal(r.repo_id)}: {terminal(r.reason)}")
    if not found.kept:
        click.echo("no homogeneous peers found; give --peer MODEL to `hfscan check`", err=True)
        sys.exit(EXIT_ERROR)


@main.command()
@click.argument("target")
@click.argument("peers", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output folder.")
@merge_options
@click.option("--shard-size", default="2GB", show_default=True, help="Largest output shard (e.g. 500MB, 2GB).")
@click.option("--hub-dir", envvar="HFSCAN_HUB_DIR", help="A local hub folder (ORG/NAME/ repos).")
@click.option("--adapter-rank", type=click.IntRange(1, 4096), default=None,
              help="LoRA adapters: write one adapter of this rank (the merged updates re-factorised by truncated "
                   "SVD; the error is printed) instead of full weights.")
@click.option("--switch-modules", "switch", type=click.IntRange(0), default=None, metavar="SHIFT",
              help="Module switching (with --method wag): every layer's attention and feed-forward block whole from "
                   "one model, no two consecutive blocks from the same one; SHIFT (0, 1, …) picks the assignment. "
                   "Tensors outside the layers are averaged with --weights.")
@guarded
def merge(target, peers, output, method, base, weights, density, lam, seed, shard_size, hub_dir, adapter_rank,
          switch):
    """Merge TARGET with PEERS (folders or Hub ids) into a new model folder, streaming tensor by tensor.

    LoRA adapters merge through their updates ΔW = B·A into full weights of their base (--base, or the base
    their adapter_config names)."""
    from .defend import card_for
    from .merge import MergeSpec, merge_folders
    from .sources import FolderSource, hub_source, resolve
    from .stages.resolve import base_source

    from ._fs import check_replaceable

    check_replaceable(Path(output))
    t = resolve(target, hub_dir, loadable=False)
    ps = [resolve(p, hub_dir, loadable=False) for p in peers]
    ref = base or (t.adapter_base if t.is_adapter else None)
    b = base_source(ref, FolderSource(hub=hub_source(hub_dir)), hub_dir).fetch_base(ref) if ref else None
    spec = MergeSpec(method, b.path if b else None, _floats(weights), density, lam, seed, _size(shard_size))
    if switch is not None:
        spec = _switching(spec, t, len(ps) + 1, switch)
    names = [t.name] + [p.name for p in ps]
    if t.is_adapter or any(p.is_adapter for p in ps):
        summary = _merge_adapters(t, ps, b, output, spec, names, card_for(t, ps, spec), adapter_rank)
    elif adapter_rank:
        raise HfscanError("--adapter-rank is for merging LoRA adapters; these are full models")
    else:
        summary = merge_folders(t.path, [p.path for p in ps], output, spec, names=names, card=card_for(t, ps, spec))
    click.echo(f"merged {1 + len(ps)} models with {method} into {terminal(summary['output_dir'])}")
    if "refactorisation_error" in summary:
        err = summary["refactorisation_error"]
        click.echo(f"{summary['output']}: re-factorisation error (relative Frobenius) max {err['max']:.2e}, "
                   f"mean {err['mean']:.2e}")


def _switching(spec, t, n_models: int, shift: int):
    """``spec`` with `switching_spec`'s per-module weights over the target's layers."""
    import dataclasses

    from .merge.switching import layers_of, switching_spec

    if spec.method != "wag":
        raise HfscanError("--switch-modules takes each block whole from one model: use it with --method wag")
    layers = layers_of(t.path, t.name)
    if layers < 2:
        raise HfscanError(f"{t.name}: --switch-modules needs a model with at least 2 numbered layers ({layers} found)")
    sw = switching_spec(n_models, layers, shift, spec.weights)
    return dataclasses.replace(spec, module_weights=sw.module_weights, label=sw.label)


def _merge_adapters(t, ps, b, output, spec, names, card, rank=None) -> dict:
    from .families.generative.merge import check_adapters, merge_adapters

    if not (t.is_adapter and all(p.is_adapter for p in ps)):
        raise HfscanError("cannot merge LoRA adapters with full models: give adapters of one base, or full models")
    if b is None:
        raise HfscanError(f"{t.name}: a LoRA adapter that names no base model; give --base BASE")
    check_adapters([t.path, *(p.path for p in ps)], names, b.path)
    return merge_adapters(t.path, [p.path for p in ps], b.path, output, spec, names, card, rank=rank)


def _size(s: str) -> int:
    s = s.strip().upper()
    for unit, mult in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024), ("B", 1)):
        if s.endswith(unit):
            try:
                return int(float(s[: -len(unit)]) * mult)
            except ValueError:
                break
    raise click.BadParameter(f"cannot read size {s!r} (e.g. 500MB, 2GB)")


@main.command()
@click.option("--hub-dir", type=click.Path(path_type=Path), default=None,
              help="Where to build the demo hub (default: the user cache).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("hfscan-report"), show_default=True)
@click.option("--rebuild", is_flag=True, help="Rebuild the demo models even if cached.")
@guarded
def demo(hub_dir, output, rebuild):
    """Build a local demo hub (a backdoored model and clean peers) and scan it."""
    from . import zoo
    from .pipeline import CheckOptions, check as run_check
    from .report import write_reports

    hub = Path(hub_dir) if hub_dir else zoo.default_cache_dir() / "demo-hub"
    click.echo(f"· demo hub: {hub} (real MiniLM-L6 layers, fine-tuned on Yelp review sentences)", err=True)
    repos = zoo.build_demo_hub(hub, rebuild=rebuild, log=lambda s: click.echo(f"· {s}", err=True))
    opts = CheckOptions(target=repos["target"], output_dir=output, hub_dir=str(hub))
    click.echo(f"· hfscan check {repos['target']} --hub-dir {hub}   (peers are discovered)", err=True)
    con = _Console()
    report = run_check(opts, log=con, progress=con.progress)
    written = write_reports(report, output, ["json", "md"])
    click.echo(summary_table(report))
    for fmt, path in written.items():
        click.echo(f"{fmt:>5}: {path}")
    # The demo succeeded when it ran; its verdict is shown above (`check` exits with the verdict).


@main.command()
@click.argument("orgs", nargs=-1)
@click.option("--models", "models_file", type=click.Path(exists=True), help="A file of model ids, one per line.")
@click.option("--pipeline-tag", default="text-classification", show_default=True,
              help="Scan only models of this task; others get a 'skipped' row.")
@click.option("--limit", type=int, help="Scan at most this many models.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("hfscan-audit"), show_default=True)
@click.option("--hub-dir", envvar="HFSCAN_HUB_DIR", help="A local hub folder (ORG/NAME/ repos).")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path),
              help="SQLite results cache (default: ~/.cache/hfscan/audit-cache.sqlite).")
@click.option("--refresh", is_flag=True, help="Rescan even models whose commit is cached.")
@click.option("--shard", default="1/1", show_default=True, help="Scan only slice i of n (stable by repo id).")
@click.option("--keep-downloads", is_flag=True, help="Keep downloaded weights in OUT/downloads (by default they are dropped after each model).")
@click.option("--search-budget", type=click.Choice(["off", "small", "default", "large"]), default="small",
              show_default=True)
@click.option("--no-defend", is_flag=True, help="Do not build defended variants.")
@click.option("--github-issue", metavar="OWNER/REPO", help="Create or update one GitHub issue with the audit "
                                                              "(GITHUB_TOKEN; dry run without --yes).")
@click.option("--yes", is_flag=True, help="Really create/update the issue (or HFSCAN_PUBLISH=1).")
@guarded
def audit(orgs, models_file, pipeline_tag, limit, output, hub_dir, cache_path, refresh, shard, keep_downloads,
          search_budget, no_defend, github_issue, yes):
    """Scan every model of ORGS (or --models FILE), cached by commit.

    `hfscan audit merge RESULT.json... -o DIR` combines shard results into one report.
    """
    from .audit import AuditOptions, merge_audits, parse_shard, run_audit

    if orgs and orgs[0] == "merge":
        if len(orgs) < 2:
            raise click.UsageError("audit merge needs at least one audit.json")
        report = merge_audits([Path(p) for p in orgs[1:]], output)
    else:
        if not orgs and not models_file:
            raise click.UsageError("give at least one ORG or --models FILE")
        opts = AuditOptions(orgs=list(orgs), models_file=models_file, pipeline_tag=pipeline_tag or None, limit=limit,
                            output_dir=output, hub_dir=hub_dir, cache=cache_path, refresh=refresh,
                            shard=parse_shard(shard), keep_downloads=keep_downloads, search_budget=search_budget,
                            defend=not no_defend)
        report = run_audit(opts, log=_Console())
    click.echo(" ".join(f"{v} {k}" for k, v in report.counts.items()) + f" ({len(report.rows)} models)")
    click.echo(f"report: {output / 'audit.md'}")
    if github_issue:
        from .publish import github_issue as gh_issue, should_send

        key = "audit:" + (",".join(report.orgs) or "models")
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.counts.items())
        res = gh_issue(github_issue, key, f"hfscan audit {','.join(report.orgs)}: {counts}",
                       (output / "audit.md").read_text(encoding="utf-8")[:60000], should_send(yes))
        click.echo(f"GitHub issue ({res.action}): {res.url or 'not sent'}")
    sys.exit(report.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=7860, show_default=True, help="7860 is a Docker Space's port.")
@click.option("--workers", type=click.IntRange(1, 16), default=None, help="Scans at once (HFSCAN_BOT_WORKERS, "
                                                                          "default 1).")
@click.option("--dir", "root", type=click.Path(path_type=Path), default=None,
              help="Queue database and reports (HFSCAN_BOT_DIR, default ~/.cache/hfscan/bot).")
@guarded
def serve(host, port, workers, root):
    """Run the Hub bot: Hugging Face webhooks (POST /webhook, secret in HFSCAN_WEBHOOK_SECRET) become scans, and
    PRs as HFSCAN_BOT_MODE says (dry-run, report-only, open-pr, push-variant; default dry-run)."""
    try:
        import uvicorn

        from .bot.app import create_app
    except ImportError:
        raise HfscanError("hfscan serve needs its web stack: pip install 'hfscan[serve]'") from None
    from .bot import Bot, BotSettings

    secret = config.webhook_secret()
    if not secret:
        raise HfscanError("set HFSCAN_WEBHOOK_SECRET to the secret of the Hub webhook (it is never logged)")
    log = _Console()
    bot = Bot(root or config.bot_dir(), BotSettings.from_env(), secret, log=log)
    log(f"bot: mode {bot.settings.mode}, queue {bot.queue.path}" +
        (f", {bot.recovered} interrupted jobs queued again" if bot.recovered else ""))
    bot.start(workers or config.bot_workers())
    try:
        uvicorn.run(create_app(bot), host=host, port=port, log_level="warning")
    finally:
        bot.stop()


@main.command("webhook-job")
@click.option("--dir", "root", type=click.Path(path_type=Path), default=Path("hfscan-job"), show_default=True,
              help="Where the report is written.")
@guarded
def webhook_job(root):
    """Run the one scan a Hugging Face Job's webhook payload (WEBHOOK_PAYLOAD) asks for, then publish as
    HFSCAN_BOT_MODE says. Exit 0 when it ran or was rightly skipped, 2 when it failed."""
    import json

    from .bot import BotSettings, Job, PayloadError, parse_event, run_job

    payload = config.webhook_payload()
    if not payload:
        raise HfscanError("WEBHOOK_PAYLOAD is not set (a Job started by a Hub webhook gets it)")
    try:
        event = parse_event(payload.encode())
    except PayloadError as e:
        raise HfscanError(f"WEBHOOK_PAYLOAD: {e}") from None
    if event.ignored:
        click.echo(json.dumps({"state": "ignored", "reason": event.ignored}))
        return
    settings = BotSettings.from_env()
    job = Job(0, event.repo_id, event.sha, settings.key, "running", 1)
    outcome = run_job(job, settings, Path(root), log=_Console())
    click.echo(json.dumps({"repo": event.repo_id, "sha": event.sha, **outcome.__dict__}))
    if outcome.state in ("failed", "retry"):
        sys.exit(EXIT_ERROR)
