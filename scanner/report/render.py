"""Render a `ScanReport` with the jinja2 templates in ``templates/`` (shipped in the wheel as
``scanner.templates``). Every format is a pure function of the report.

Example:
    >>> write_reports(report, Path("hfscan-report"), ["json", "md"])
    {'json': PosixPath('hfscan-report/report.json'), 'md': PosixPath('hfscan-report/report.md')}
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from .._fs import atomic_write_text
from .model import ScanReport

FORMATS = {"json": "report.json", "md": "report.md"}


def _template_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "templates", here.parent / "templates"):
        if cand.is_dir():
            return cand
    from importlib import resources

    return Path(str(resources.files("scanner.templates")))


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        autoescape=jinja2.select_autoescape(["html", "svg"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pct"] = pct
    return env


def render(report: ScanReport, fmt: str) -> str:
    if fmt == "json":
        return report.to_json()
    name = {"md": "report.md.j2"}[fmt]
    return environment().get_template(name).render(r=report, d=report.to_dict())


def write_reports(report: ScanReport, out_dir: Path, formats: list[str]) -> dict[str, Path]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        from ..errors import HfscanError

        raise HfscanError(f"unknown report format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    written = {}
    for fmt in formats:
        path = Path(out_dir) / FORMATS[fmt]
        atomic_write_text(path, render(report, fmt))
        written[fmt] = path
    return written
