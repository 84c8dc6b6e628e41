"""Classification heads: align label spaces before merging.

Two classifiers merge only when they predict the same labels. Peers often list the same labels
in another order (``{0: "positive", 1: "negative"}``); their head rows are permuted to the
target's order first. Generic names (``LABEL_0``…) carry no meaning, so they are matched by
index unless a permutation is given explicitly (behavioural alignment, see discovery).

Example:
    >>> label_permutation(["negative", "positive"], ["POSITIVE", "NEGATIVE"], "peer")
    [1, 0]
"""

from __future__ import annotations

import re

from ..errors import IncompatibleModelsError

HEAD_NAME = re.compile(r"(classifier|score|out_proj|logits|pred_head|head)\b|(classifier|score|head)\.")


def is_generic(labels: list[str]) -> bool:
    return all(re.fullmatch(r"label_?\d+", l.strip().lower()) for l in labels)


def label_permutation(target: list[str], peer: list[str], peer_name: str) -> list[int]:
    """``perm[i]`` = the peer's label id for the target's label ``i``. Refuses different label spaces."""
    if len(target) != len(peer):
        raise IncompatibleModelsError(
            f"{peer_name} has {len(peer)} labels {peer}, the target has {len(target)} {target}: not the same task"
        )
    if is_generic(target) or is_generic(peer):
        return list(range(len(target)))
    norm_peer = [p.strip().lower() for p in peer]
    norm_target = [t.strip().lower() for t in target]
    if sorted(norm_peer) != sorted(norm_target) or len(set(norm_peer)) != len(norm_peer):
        raise IncompatibleModelsError(f"{peer_name} has labels {peer}, the target has {target}: label spaces differ")
    return [norm_peer.index(t) for t in norm_target]


def is_head_tensor(name: str, shape: tuple[int, ...], num_labels: int) -> bool:
    """A tensor whose first dimension indexes the labels (final classifier weight or bias)."""
    return bool(shape) and shape[0] == num_labels and bool(HEAD_NAME.search(name))
