"""An inline SVG bar chart of ASR before/after defense per finding, plus clean accuracy.

No script, no external asset: the HTML report stays self-contained.
"""

from __future__ import annotations

from markupsafe import Markup, escape

from .model import ScanReport

RED, GREEN, GREY, BLUE = "#cf222e", "#1a7f37", "#8c959f", "#0969da"


def asr_chart(report: ScanReport, max_rows: int = 12) -> Markup:
    rows: list[tuple[str, float | None, float | None, str]] = []
    for f in report.findings[:max_rows]:
        rows.append((f"{f.trigger} → {f.target_label}", f.asr_before, f.asr_after, "asr"))
    if report.defense and report.defense.library_asr_max_after is not None:
        rows.append(("published triggers (worst)", None, report.defense.library_asr_max_after, "asr"))
    rows.append(("clean accuracy", report.clean.accuracy_before, report.clean.accuracy_after, "acc"))
    label_w, bar_w, row_h = 260, 560, 44
    height = 40 + row_h * len(rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="asr-chart" role="img" width="{label_w + bar_w + 80}" '
        f'height="{height}" viewBox="0 0 {label_w + bar_w + 80} {height}">',
        f"<title>Attack success rate before and after defense for {escape(report.target.id)}</title>",
        f'<rect x="{label_w}" y="6" width="12" height="12" fill="{RED}"/><text x="{label_w + 18}" y="17">before</text>',
        f'<rect x="{label_w + 90}" y="6" width="12" height="12" fill="{GREEN}"/><text x="{label_w + 108}" y="17">after defense</text>',
    ]
    for i, (label, before, after, kind) in enumerate(rows):
        y = 30 + i * row_h
        parts.append(f'<text x="{label_w - 8}" y="{y + 20}" text-anchor="end">{escape(label[:40])}</text>')
        for j, (value, colour) in enumerate(((before, BLUE if kind == "acc" else RED), (after, GREEN))):
            yy = y + 4 + j * 17
            if value is None:
                parts.append(f'<text x="{label_w + 4}" y="{yy + 12}" fill="{GREY}">n/a</text>')
                continue
            w = max(1.0, bar_w * value)
            parts.append(f'<rect class="bar" x="{label_w}" y="{yy}" width="{w:.1f}" height="14" fill="{colour}">'
                         f"<title>{escape(label)}: {100 * value:.1f}%</title></rect>")
            parts.append(f'<text x="{label_w + w + 4:.1f}" y="{yy + 12}">{100 * value:.1f}%</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
