"""The model-card section: rendered between markers, replaced in place on every scan.

Everything outside the markers (the YAML header, the author's text) is left byte-identical. A card
whose markers are not exactly one start followed by one end, or none at all (markers written twice,
an unterminated start, reversed markers), is not touched: `upsert_section` raises `CardUnsafeError`
and the caller says so. Markers inside the rendered section (from a label name, a trigger) are
neutralised, so the section can never end early.

Example:
    >>> upsert_section("# My model\\n", START + "\\nfound nothing\\n" + END)
    '# My model\\n\\n<!-- hfscan:start -->\\nfound nothing\\n<!-- hfscan:end -->\\n'
"""

from __future__ import annotations

from ..errors import HfscanError

START, END = "<!-- hfscan:start -->", "<!-- hfscan:end -->"


class CardUnsafeError(HfscanError):
    """The card's hfscan markers cannot be read safely; the card is left as it is."""


def neutralise_markers(text: str) -> str:
    """``text`` with every hfscan marker made inert (its ``<`` as an entity: it renders the same)."""
    return text.replace(START, "&lt;" + START[1:]).replace(END, "&lt;" + END[1:])


def section_span(card: str) -> tuple[int, int] | None:
    """Where the hfscan section is (start, end past its end marker), ``None`` if the card has none.

    Raises `CardUnsafeError` unless the card has no marker or exactly one start before exactly one end.
    """
    starts, ends = card.count(START), card.count(END)
    if starts == ends == 0:
        return None
    i, j = card.find(START), card.find(END)
    if starts != 1 or ends != 1 or j < i + len(START):
        raise CardUnsafeError(f"the model card's hfscan markers are malformed ({starts} start, {ends} end"
                              f"{', end before start' if starts == ends == 1 else ''}); the card was left as it is")
    return i, j + len(END)


def upsert_section(card: str, section: str) -> str:
    """``card`` with its hfscan section replaced by ``section`` (appended when it has none)."""
    section = section.strip("\n")
    if not (section.startswith(START) and section.endswith(END)):
        raise ValueError("a card section must start and end with the hfscan markers")
    section = START + neutralise_markers(section[len(START):-len(END)]) + END
    span = section_span(card)
    if span is not None:
        return card[:span[0]] + section + card[span[1]:]
    sep = "" if not card or card.endswith("\n\n") else ("\n" if card.endswith("\n") else "\n\n")
    return card + sep + section + "\n"
