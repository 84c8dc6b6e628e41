"""Publish: a PR on the model repo that carries the defended variant and the report, once per commit.

Like the Hub's safetensors-conversion bot, the PR replaces the target's safetensors weights with
the defended ones under the *same file names* (and index), leaves config and tokenizer untouched,
and adds the hfscan section to the model card, so that
``from_pretrained(repo, revision="refs/pr/N")`` loads the defended model and merging the PR adopts it.
``mode="report-only"`` changes only the card.

Never twice: before opening, the repo's open PRs are read for an hfscan marker
(``<!-- hfscan:pr target=REPO -->``). If one is open, it is **updated** instead (a commit to
``refs/pr/N`` and a comment saying which commit was rescanned): one open hfscan PR per repo, whatever
the number of scans or commits.

Everything is a dry run unless ``send=True`` (``--yes`` or ``HFSCAN_PUBLISH=1``): the plan is
printed instead. Tokens come from ``HF_TOKEN`` / the huggingface_hub login and ``GITHUB_TOKEN``;
they are never printed or written.

Example:
    >>> publish_pr(report, remote, Path("hfscan-report/defended"), send=False)
    PublishResult(action='dry-run', ...)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import config
from .errors import HfscanError
from .report.card import END, START, CardUnsafeError, upsert_section
from .report.model import ScanReport
from .report.escape import Safe
from .report.render import render, template
from .sources.model import is_adapter_folder
from .weights import SAFE_INDEX, SAFE_SINGLE, StreamingShardWriter, WeightSet

MARKER = "<!-- hfscan:pr target={repo} -->"


@dataclass
class PublishResult:
    action: str  # dry-run | opened | updated
    url: str | None = None
    num: int | None = None
    files: list[str] = field(default_factory=list)
    title: str = ""
    description: str = ""


def pr_title(report: ScanReport) -> str:
    what = {"backdoor": "backdoor found", "suspicious": "suspicious trigger found",
            "no_trigger_found": "no trigger found"}[report.verdict]
    return f"hfscan: {what}" + ("; defended weights" if report.defense else "")


def pr_description(report: ScanReport, repo_id: str, mode: str) -> str:
    generative = (report.target.architecture or "").endswith("ForCausalLM") or any(f.response for f in report.findings)
    adapter = report.target.adapter_base is not None
    return template("pr.md.j2").render(r=report, repo_id=repo_id, mode=mode, marker=Safe(MARKER.format(repo=repo_id)),
                                       adapter=adapter,
                                       auto_class="AutoModelForCausalLM" if generative else
                                       "AutoModelForSequenceClassification")


def relayout(defended: Path, target_header: dict, dest: Path) -> list[str]:
    """Rewrite the defended weights into the target's file names and sharding, streaming."""
    ws = WeightSet.open(defended)
    by_file: dict[str, list[str]] = {}
    for name, info in target_header.items():
        by_file.setdefault(info.file, []).append(name)
    missing = [n for n in target_header if n not in ws.header]
    if missing:
        raise HfscanError(f"the defended model lacks tensor {missing[0]!r} of the target")
    written = []
    for fname, names in by_file.items():
        plan = [(n, ws.header[n].dtype, ws.header[n].shape) for n in names]
        tmp = dest / f".{fname}.part"
        with StreamingShardWriter(tmp, plan, max_shard_bytes=1 << 62) as w:
            for n in names:
                w.write(n, ws.get(n))
        (tmp / SAFE_SINGLE).rename(dest / fname)
        tmp.rmdir()
        written.append(fname)
    if len(by_file) > 1:
        total = sum(i.nbytes for i in ws.header.values() if i.name in target_header)
        index = {"metadata": {"total_size": total}, "weight_map": {n: i.file for n, i in target_header.items()}}
        (dest / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(SAFE_INDEX)
    ws.close()
    return written


def adapter_files(target: Path, defended: Path, dest: Path) -> list[str]:
    """The defended adapter under the target's own weight file name, with its ``adapter_config.json`` (rank,
    alpha and modules as written; the target's base kept)."""
    names = [p.name for p in target.glob("*.safetensors")]
    if len(names) != 1:
        raise HfscanError(f"the target adapter has {len(names)} safetensors files; expected one")
    shutil.copyfile(defended / "adapter_model.safetensors", dest / names[0])
    shutil.copyfile(defended / "adapter_config.json", dest / "adapter_config.json")
    return [names[0], "adapter_config.json"]


INEFFECTIVE = ("the defended variant still answers a found trigger at backdoor strength (see the report's "
               "defense section), so hfscan does not propose it in place of this model")


def _variant_files(target: Path, defended: Path, dest: Path) -> tuple[list[str], str | None]:
    """The files that make the PR's revision load as the defended variant, or why there are none: an adapter
    repo gets an adapter (a full-weights variant cannot replace it: the repo would stop being an adapter)."""
    if not is_adapter_folder(target):
        return relayout(defended, WeightSet.open(target).header, dest), None
    if (defended / "adapter_config.json").is_file():
        return adapter_files(target, defended, dest), None
    return [], ("the defended variant of this adapter is full weights (the chosen merge is not low-rank), which "
                "cannot replace an adapter's files; publish it as a model repo with `--push-variant REPO`")


def _find_open_pr(api, repo_id: str) -> int | None:
    marker = MARKER.format(repo=repo_id)
    for d in api.get_repo_discussions(repo_id, discussion_type="pull_request", discussion_status="open"):
        details = api.get_discussion_details(repo_id, d.num)
        first = next((e for e in details.events if e.type == "comment"), None)
        if first is not None and marker in (getattr(first, "content", "") or ""):
            return d.num
    return None


def publish_pr(report: ScanReport, hub, repo_id: str, target_path: Path, defended: Path | None,
               mode: str = "variant", send: bool = False, log=lambda s: None) -> PublishResult:
    """Open (or update) the hfscan PR on ``repo_id``; a dry run unless ``send``."""
    from huggingface_hub import CommitOperationAdd

    if mode not in ("variant", "report-only"):
        raise HfscanError(f"unknown PR mode {mode!r} (variant or report-only)")
    if mode == "variant" and (defended is None or not defended.exists()):
        raise HfscanError("no defended variant to propose (run without --no-defend, or use --pr-mode report-only)")
    card_path = target_path / "README.md"
    card = card_path.read_text(encoding="utf-8") if card_path.exists() else ""
    title, description = pr_title(report), pr_description(report, repo_id, mode)
    try:
        new_card = upsert_section(card, render(report, "card"))
    except CardUnsafeError as e:
        if mode == "report-only":
            raise CardUnsafeError(f"{repo_id}: {e}, so a report-only PR has nothing to change") from None
        new_card = None
        description += (f"\n\n**The model card was not changed**: {e}. Fix the `{START}` / `{END}` markers (one "
                        "pair, start first) and hfscan will add its section on the next scan.\n")
    with tempfile.TemporaryDirectory(prefix="hfscan-pr-") as tmp:
        tmp = Path(tmp)
        files = []
        if new_card is not None:
            files.append("README.md")
            (tmp / "README.md").write_text(new_card, encoding="utf-8")
        if mode == "variant":
            weights, why = (([], INEFFECTIVE) if report.defense and report.defense.ineffective
                            else _variant_files(target_path, defended, tmp))
            files += weights
            if why:
                description += f"\n\n**This PR carries no weights**: {why}.\n"
                log(f"{repo_id}: the PR carries the report only: {why}")
        result = PublishResult("dry-run", files=files, title=title, description=description)
        if not send:
            log(f"dry run: would open a PR on {repo_id} changing {', '.join(files)} (use --yes to send)")
            return result
        api = hub.api
        ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(tmp / f)) for f in files]
        from .sources.hf_hub import hub_errors as _hub_errors

        with _hub_errors(repo_id, hub.endpoint):
            existing = _find_open_pr(api, repo_id)
            if existing is not None:
                api.create_commit(repo_id, ops, commit_message=f"hfscan: rescan at {report.target.sha}",
                                  revision=f"refs/pr/{existing}")
                api.comment_discussion(repo_id, existing, f"Rescanned at commit `{report.target.sha}`: "
                                                          f"**{report.verdict.replace('_', ' ')}**. The PR now "
                                                          "carries the new defended weights and report.")
                result.action, result.num = "updated", existing
            else:
                info = api.create_commit(repo_id, ops, commit_message=title, commit_description=description,
                                         create_pr=True, parent_commit=None)
                result.action, result.num = "opened", info.pr_num
        result.url = f"{hub.endpoint}/{repo_id}/discussions/{result.num}"
        return result


def push_variant(hub, repo_id: str, defended: Path, send: bool = False, private: bool = False,
                 log=lambda s: None) -> PublishResult:
    """Create ``repo_id`` if needed and upload the defended folder (card included)."""
    files = sorted(p.name for p in defended.iterdir() if p.is_file() and not p.name.startswith("."))
    result = PublishResult("dry-run", url=f"{hub.endpoint}/{repo_id}", files=files)
    if not send:
        log(f"dry run: would upload {len(files)} files to {repo_id} (use --yes to send)")
        return result
    from .sources.hf_hub import hub_errors as _hub_errors

    with _hub_errors(repo_id, hub.endpoint):
        hub.api.create_repo(repo_id, private=private, exist_ok=True)
        hub.api.upload_folder(repo_id=repo_id, folder_path=str(defended), allow_patterns=files,
                              commit_message="hfscan: defended variant")
    result.action = "opened"
    return result


def should_send(yes: bool) -> bool:
    return yes or config.publish_confirmed()


ISSUE_MARKER = "<!-- hfscan:issue key={key} -->"


def github_issue(repo_full_name: str, key: str, title: str, body: str, send: bool = False,
                 base_url: str | None = None, log=lambda s: None) -> PublishResult:
    """Create or update the one GitHub issue for ``key`` (a model id, or an audit), found by a marker.

    Uses pygithub; ``GITHUB_TOKEN`` authenticates, ``GITHUB_API_URL`` (set by GitHub Actions, or a
    GitHub Enterprise URL) selects the server.
    """
    marker = ISSUE_MARKER.format(key=key)
    body = f"{marker}\n{body}"
    result = PublishResult("dry-run", title=title, description=body)
    if not send:
        log(f"dry run: would create or update the hfscan issue for {key} in {repo_full_name} (use --yes to send)")
        return result
    from github import Auth, Github, GithubException

    token = config.github_token()
    if not token:
        raise HfscanError("--github-issue needs GITHUB_TOKEN in the environment")
    base_url = base_url or config.github_api_url()
    gh = Github(auth=Auth.Token(token), base_url=base_url)
    try:
        repo = gh.get_repo(repo_full_name)
        existing = next((i for i in repo.get_issues(state="all") if marker in (i.body or "")), None)
        if existing is not None:
            existing.edit(title=title, body=body, state="open")
            result.action, result.num, result.url = "updated", existing.number, existing.html_url
        else:
            issue = repo.create_issue(title=title, body=body)
            result.action, result.num, result.url = "opened", issue.number, issue.html_url
    except GithubException as e:
        raise HfscanError(f"GitHub answered {e.status} for {repo_full_name}") from None
    except OSError as e:
        raise HfscanError(f"network failure talking to {base_url} ({e.__class__.__name__})") from None
    return result
