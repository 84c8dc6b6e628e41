"""Candidate triggers for one scan: the published library, the weight-space differential and the
gradient search, gathered from the target *and from every peer* (the peers' own best candidates
are what the verdict's null is made of).

Example:
    >>> cands = gather([target_path, *peer_paths], [target_clf, *peer_clfs], texts, base=None)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .differential import co_moved, embedding_outliers, insertable_tokens, nonfinite_rows
from .search import SearchBudget, search_triggers
from ...probe.triggers import Trigger
from .library import LIBRARY


def gather(
    paths: list[Path],
    classifiers: list,
    texts: list[str],
    base: Path | None = None,
    budget: SearchBudget = SearchBudget(),
    differential_k: int = 5,
    pair_k: int = 3,
    partner_k: int = 2,
    log: Callable[[str], None] = lambda s: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    note: Callable[[str], None] = lambda s: None,
) -> list[Trigger]:
    """Return the union of candidates: the library first, then each model's own.

    ``paths[0]`` / ``classifiers[0]`` is the target; only its differential outliers are also
    tried in pairs: with each other (the top ``pair_k``), and in the search with their ``partner_k``
    co-moved tokens each.
    """
    allowed = insertable_tokens(classifiers[0].tokenizer)
    broken = nonfinite_rows(paths)  # tokens whose embedding is NaN/Inf in any model: never a candidate
    allowed = {i: t for i, t in allowed.items() if i not in broken}
    union: list[Trigger] = list(LIBRARY)
    total = len(classifiers) * classifiers[0].num_labels if budget.max_len > 0 else len(classifiers)
    done = 0

    def step(n: int = 1) -> None:
        nonlocal done
        done += n
        progress(done, total)

    progress(0, total)
    for i, (path, clf) in enumerate(zip(paths, classifiers)):
        others = [p for j, p in enumerate(paths) if j != i]
        mine: list[Trigger] = []
        outliers = embedding_outliers(path, others, clf.tokenizer, base=base, top_k=differential_k, allowed=allowed,
                                      log=note if i == 0 else (lambda s: None)) if others and differential_k else []
        mine += [Trigger(s.text, "word", "differential") for s in outliers]
        top = outliers[:pair_k]
        pairs: list[tuple[int, int]] = []
        if i == 0:  # pairs of the target's outliers (a two-word trigger whose words do nothing alone)
            mine += [Trigger(f"{a.text} {b.text}", "word", "differential") for a in top for b in top if a is not b]
            if budget.max_len >= 2 and partner_k:
                # each outlier with the tokens that moved along with it (`co_moved`: a partner frequent in the
                # task's text moves in the peers too, so it is no outlier itself), scored by the search
                partners = co_moved(path, others, clf.tokenizer, [a.token_id for a in top], base=base,
                                    top_k=partner_k, allowed=allowed)
                pairs = [(a, b.token_id) for a, bs in partners.items() for b in bs]
        if budget.max_len > 0:
            found = search_triggers(getattr(clf, "fast", clf), texts, clf.clean_predict(texts), allowed, budget=budget,
                                    seeds=[s.token_id for s in top], pairs=pairs, progress=step)
            mine += found
            step((i + 1) * classifiers[0].num_labels - done)  # labels the search skipped (no eligible inputs)
        else:
            step()
        union += mine
        log(f"candidates from {clf.name}: " + ", ".join(repr(t.text) for t in mine[:8]) + (" …" if len(mine) > 8 else ""))
    # one entry per text: the first source wins (library, then differential, then search)
    seen: dict[str, Trigger] = {}
    for t in union:
        seen.setdefault(t.text, t)
    return list(seen.values())
