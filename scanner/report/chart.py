"""An inline SVG bar chart of ASR before/after defense per finding, plus clean accuracy.

No script, no external asset: the HTML report stays self-contained.
"""

from __future__ import annotations

from markupsafe import Markup, escape

from .model import ScanReport

RED, GREEN, GREY, BLUE, LIGHT_BLUE, INK = "#cf222e", "#1a7f37", "#8c959f", "#0969da", "#54aeff", "#1b1f24"
LEGEND = (("ASR before", RED), ("ASR after defense", GREEN), ("accuracy before", BLUE),
          ("accuracy after", LIGHT_BLUE))


def _rows(report: ScanReport, max_rows: int) -> list[tuple[str, float | None, float | None, str, float | None]]:
    """(label, before, after, kind, peers' level) per bar pair; ASR rows first, clean accuracy last."""
    rows = [(f"{f.trigger} → {f.target_label}", f.asr_before, f.asr_after, "asr", f.peer_asr_max)
            for f in report.findings[:max_rows]]
    d = report.defense
    if d and d.library_asr_max_after is not None:
        name = f" ({d.library_worst_trigger})" if d.library_worst_trigger else ""
        rows.append((f"worst published trigger{name}", None, d.library_asr_max_after, "asr", None))
    rows.append(("clean accuracy", report.clean.accuracy_before, report.clean.accuracy_after, "acc", None))
    return rows


def asr_chart(report: ScanReport, max_rows: int = 12) -> Markup:
    """The chart: it scales with the page (``viewBox``, width 100%), every colour is in the legend, the peers'
    highest ASR for each trigger is a dark tick, and clean accuracy sits below a rule, in its own colours."""
    rows = _rows(report, max_rows)
    label_w, bar_w, row_h, top = 190, 320, 44, 66  # 570 wide: scaled to a 420-px phone, the text stays ~9 px
    width, height = label_w + bar_w + 60, top + row_h * len(rows) + 12
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="asr-chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="100%" preserveAspectRatio="xMinYMin meet" style="max-width:{width}px">',
        f"<title>Attack success rate before and after defense for {escape(report.target.id)}</title>",
    ]
    for k, (name, colour) in enumerate(LEGEND):
        x, y = 8 + (k % 3) * 185, 6 + (k // 3) * 20
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{x + 18}" y="{y + 11}">{name}</text>')
    parts.append(f'<rect x="{8 + 185}" y="24" width="3" height="16" fill="{INK}"/>'
                 f'<text x="{8 + 185 + 9}" y="37">peers\u2019 highest ASR</text>')
    for i, (label, before, after, kind, level) in enumerate(rows):
        y = top + i * row_h
        if kind == "acc":
            parts.append(f'<line x1="0" x2="{width}" y1="{y - 4}" y2="{y - 4}" stroke="{GREY}" stroke-dasharray="4 3"/>')
        short = label if len(label) <= 28 else label[:27] + "\u2026"
        parts.append(f'<text x="{label_w - 8}" y="{y + 20}" text-anchor="end">{escape(short)}</text>')
        colours = (BLUE, LIGHT_BLUE) if kind == "acc" else (RED, GREEN)
        for j, (value, colour) in enumerate(zip((before, after), colours)):
            parts.append(_bar(label_w, bar_w, y + 4 + j * 17, value, colour, label))
        if level is not None:
            x = label_w + bar_w * level
            parts.append(f'<rect class="level" x="{x - 1:.1f}" y="{y + 1}" width="3" height="36" fill="{INK}">'
                         f"<title>peers\u2019 highest ASR: {100 * level:.1f}%</title></rect>")
    parts.append("</svg>")
    return Markup("".join(parts))


def _bar(x0: int, bar_w: int, y: int, value: float | None, colour: str, label: str) -> str:
    if value is None:
        return f'<text x="{x0 + 4}" y="{y + 12}" fill="{GREY}">n/a</text>'
    w = max(1.0, bar_w * value)
    return (f'<rect class="bar" x="{x0}" y="{y}" width="{w:.1f}" height="14" fill="{colour}">'
            f"<title>{escape(label)}: {100 * value:.1f}%</title></rect>"
            f'<text x="{x0 + w + 4:.1f}" y="{y + 12}">{100 * value:.1f}%</text>')
