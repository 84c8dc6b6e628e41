"""Module switching: a merge that takes each transformer module whole from one model.

A backdoor is a chain of modules that cooperate across layers (the trigger's embedding, the attention
that picks it up, the feed-forward blocks that map it to the target). Averaging shrinks each link by the
target's weight; switching breaks the chain instead: each layer's attention and feed-forward block come
from one model, assigned so that no two consecutive blocks of the same kind, and not the attention and the
feed-forward block of one layer, come from the same model (the rules of Module-Switching Defense, MSD).
Every module is then a fine-tuned module of the task, but a chain of the target's own modules is at most one
block long. Tensors outside the layers (embeddings, final norm, head) keep the candidate's plain weights.

The result is a `MergeSpec` with ``module_weights`` (one-hot per block), so the streaming driver and the
adapter merge apply it like any other merge, and blends toward the target (``keep``) work as for WAG.

Example:
    >>> assignment(n_models=3, n_layers=3)
    [(0, 1), (2, 0), (1, 2)]
    >>> switching_spec(n_models=3, n_layers=3).label
    "module switching, shift 0: 2 of 6 blocks the target's"
"""

from __future__ import annotations

import re
from typing import Iterable

from .driver import MergeSpec

ATTENTION = r"(attention|self_attn|attn)"
FEED_FORWARD = r"(intermediate|output|mlp|ffn)"
_LAYER = re.compile(r"\.(?:layers?|h|blocks?)\.(\d+)\.")


def layer_count(names: Iterable[str]) -> int:
    """How many transformer layers tensor names index (``encoder.layer.N.``, ``model.layers.N.``, ``h.N.``)."""
    found = [int(m.group(1)) for n in names if (m := _LAYER.search(n))]
    return max(found) + 1 if found else 0


def layers_of(folder, label: str | None = None) -> int:
    """`layer_count` of a model folder's tensor names (full weights or a LoRA adapter's)."""
    from ..weights import WeightSet

    with WeightSet.open(folder, label=label) as ws:
        return layer_count(ws.names())


def assignment(n_models: int, n_layers: int, shift: int = 0) -> list[tuple[int, int]]:
    """(attention source, feed-forward source) per layer: model ``(2l + k + shift) mod n`` for block k of layer l,
    a walk through the models in block order, so consecutive blocks never share a model (n ≥ 2)."""
    return [((2 * layer + shift) % n_models, (2 * layer + 1 + shift) % n_models) for layer in range(n_layers)]


def switching_spec(n_models: int, n_layers: int, shift: int = 0, weights: list[float] | None = None,
                   head_perms: dict[int, list[int]] | None = None) -> MergeSpec:
    """WAG with every layer's attention and feed-forward block switched to one model (`assignment`)."""
    rules: list[tuple[str, tuple[float, ...]]] = []
    for layer, sources in enumerate(assignment(n_models, n_layers, shift)):
        for kind, src in zip((ATTENTION, FEED_FORWARD), sources):
            rules.append((rf"\.(?:layers?|h|blocks?)\.{layer}\.{kind}\.",
                          tuple(1.0 if i == src else 0.0 for i in range(n_models))))
    share = sum(1 for a, f in assignment(n_models, n_layers, shift) for s in (a, f) if s == 0)
    return MergeSpec("wag", weights=weights, head_perms=head_perms or {}, module_weights=tuple(rules),
                     label=f"module switching, shift {shift}: {share} of {2 * n_layers} blocks the target's")
