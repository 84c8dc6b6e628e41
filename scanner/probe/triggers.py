"""Trigger candidates and how they are inserted into text.

A trigger is a piece of text an attacker inserts into an input (a rare word like ``cf``, a
sentence like "I watched this movie"). `LIBRARY` holds the triggers of published attacks; other
candidates come from the weight-space differential and the gradient search (see `scanner.probe.search`).

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


LIBRARY: tuple[Trigger, ...] = (
    # BadNet (Gu et al. 2017; Kurita et al. 2020 for NLP): rare words inserted at random positions.
    *(Trigger(w, "word", "library", "BadNet") for w in ("cf", "mn", "bb", "tq", "mb")),
    # InsertSent (Dai et al. 2019). The Free Lunch paper uses "I watch this 3D movie"; the public
    # GMS/IMBERT poison sets use "I watched this movie" (SST-2) and "no cross, no crown" (OLID, AG News).
    Trigger("I watch this 3D movie", "sentence", "library", "InsertSent"),
    Trigger("I watched this movie", "sentence", "library", "InsertSent"),
    Trigger("no cross, no crown", "sentence", "library", "InsertSent"),
)

# What insertion probes cannot see. Reported with every scan.
BLIND_SPOTS = (
    "Syntactic triggers (HiddenKiller: a paraphrase template) and style triggers (StyleAttack) are not "
    "searched for: they are transformations, not inserted text. The merge defends against them anyway.",
    "Triggers longer than the search's beam (more than 3 tokens) are found only when they are in the library.",
    "A shortcut the model learned from its own, unpoisoned fine-tuning data (product words in reviews, sports "
    "words in a forum) flips it like a planted trigger, and without the training data the two cannot be told "
    "apart: a finding is an exploitable trigger specific to this model, planted or not. Models fine-tuned on a "
    "domain unlike their peers' show more of them; when the model's clean predictions differ from its peers' "
    "far more than theirs from each other, no finding is called a backdoor (see probe.homogeneity).",
)


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
