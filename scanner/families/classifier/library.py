"""Published triggers of classifier backdoors, and what insertion probes cannot see.

Example:
    >>> [t.text for t in LIBRARY][:2]
    ['cf', 'mn']
"""

from __future__ import annotations

from ...probe.triggers import Trigger

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


