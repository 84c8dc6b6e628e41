"""The model-card section: rendered between markers, replaced in place on every scan.

Everything outside the markers (the YAML header, the author's text) is left byte-identical.

Example:
    >>> new_card = upsert_section(old_card, render(report, "card"))
"""

from __future__ import annotations

START, END = "<!-- hfscan:start -->", "<!-- hfscan:end -->"


def upsert_section(card: str, section: str) -> str:
    section = section.strip("\n")
    if not (section.startswith(START) and section.endswith(END)):
        raise ValueError("a card section must start and end with the hfscan markers")
    i = card.find(START)
    j = card.find(END, i + 1) if i >= 0 else -1
    if i >= 0 and j >= 0:
        return card[:i] + section + card[j + len(END):]
    sep = "" if not card or card.endswith("\n\n") else ("\n" if card.endswith("\n") else "\n\n")
    return card + sep + section + "\n"
