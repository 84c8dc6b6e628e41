"""Render a `ScanReport` with the jinja2 templates in ``templates/`` (shipped in the wheel as
``scanner.templates``). Every format is a pure function of the report.

Example:
    >>> write_reports(report, Path("hfscan-report"), ["json", "md"])
    {'json': PosixPath('hfscan-report/report.json'), 'md': PosixPath('hfscan-report/report.md')}
"""

from __future__ import annotations

import statistics
from pathlib import Path

import jinja2

from .._fs import atomic_write_text
from .escape import code, link, md_finalize
from .model import ScanReport

FORMATS = {
    "json": "report.json",
    "md": "report.md",
    "sarif": "report.sarif",
    "html": "report.html",
    "summary": "summary.md",
    "card": "card_section.md",
}
SUMMARY_LIMIT = 1024 * 1024 - 1024  # GitHub's job summary limit is 1 MiB per step


def _template_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "templates", here.parent / "templates"):
        if cand.is_dir():
            return cand
    from importlib import resources

    return Path(str(resources.files("scanner.templates")))


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def environment(markdown: bool = False) -> jinja2.Environment:
    """The templates' environment: HTML-autoescaped, or for Markdown (``markdown=True``) with every value
    escaped by `escape.md_finalize` unless a filter (``code``, ``link``) already made it safe."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2", "svg"), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        finalize=md_finalize if markdown else None,
    )
    env.filters["pct"] = pct
    env.filters["code"] = code
    env.filters["link"] = link
    env.filters["median"] = lambda xs: statistics.median(xs) if xs else None
    return env


def template(name: str) -> jinja2.Template:
    """A template by file name, from the environment its format needs (Markdown for ``*.md.j2``)."""
    return environment(markdown=name.endswith(".md.j2")).get_template(name)


def render(report: ScanReport, fmt: str, location_root: str = "") -> str:
    """Render one format. ``location_root``: the model's folder inside the repository (SARIF)."""
    if fmt == "json":
        return report.to_json()
    if fmt == "sarif":
        import json

        from .sarif import sarif_parts

        text = template("report.sarif.j2").render(r=report, **sarif_parts(report, location_root))
        return json.dumps(json.loads(text), indent=2) + "\n"  # normalised, and proof that it parses
    if fmt == "html":
        from .chart import asr_chart

        return template("report.html.j2").render(r=report, chart=asr_chart(report))
    if fmt == "summary":
        for rows in (50, 10, 0):
            text = template("summary.md.j2").render(r=report, max_rows=rows)
            if len(text.encode()) <= SUMMARY_LIMIT:
                return text
        return text.encode()[:SUMMARY_LIMIT].decode(errors="ignore")
    name = {"md": "report.md.j2", "card": "card_section.md.j2"}[fmt]
    return template(name).render(r=report)


def write_reports(report: ScanReport, out_dir: Path, formats: list[str], location_root: str = "") -> dict[str, Path]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        from ..errors import HfscanError

        raise HfscanError(f"unknown report format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    written = {}
    for fmt in formats:
        path = Path(out_dir) / FORMATS[fmt]
        atomic_write_text(path, render(report, fmt, location_root))
        written[fmt] = path
    return written
