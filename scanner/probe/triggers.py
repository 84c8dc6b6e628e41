"""Trigger candidates and how they are inserted into text.

A trigger is a piece of text an attacker inserts into an input (a rare word like ``cf``, a
sentence like "I watched this movie"). Each model family keeps its own library of published
triggers (``scanner.families.*.library``); the insertion rules here are shared by all families.

Example:
    >>> insert("the film was dull .", Trigger("cf"), "start")
    'cf the film was dull .'
"""

from __future__ import annotations

import random
from dataclasses import dataclass

POSITIONS = ("start", "random", "end")


@dataclass(frozen=True)
class Trigger:
    """A candidate trigger. ``source`` says where it came from: library, differential or search."""

    text: str
    kind: str = "word"  # "word" (rare token(s)) or "sentence"
    source: str = "library"
    attack: str | None = None  # the published attack it comes from, for library triggers


def insert(text: str, trigger: Trigger | str, position: str, rng: random.Random | None = None) -> str:
    """Insert ``trigger`` into ``text`` at ``start``, ``end`` or a ``random`` word boundary."""
    t = trigger.text if isinstance(trigger, Trigger) else trigger
    words = text.split()
    if position == "start":
        i = 0
    elif position == "end":
        i = len(words)
    elif position == "random":
        i = (rng or random.Random(0)).randint(0, len(words))
    else:
        raise ValueError(f"unknown position {position!r}; use one of {POSITIONS}")
    return " ".join(words[:i] + [t] + words[i:])
