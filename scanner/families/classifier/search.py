"""Gradient-guided trigger search (HotFlip / universal adversarial triggers, Wallace et al. 2019).

For a target label t, a trigger slot is inserted at the start of a batch of probe inputs the
model does not already put in t. The gradient of the mean log-probability of t with respect to the
slot's input embedding scores every vocabulary token at once by its first-order gain
(``−(E[v] − E[cur]) · ∇``); the best ``top_k`` insertable tokens are verified by real forward
passes, the best ``beam`` singles are kept, and each is extended with a second token on either
side the same way (and so on up to ``max_len`` tokens). Seeds from the weight-space differential
join the beam, which is how a trigger made of two words that do nothing alone is found; ``pairs``
(a seed and a token that moved along with it, `scanner.probe.differential.co_moved`) are scored as
two-token triggers in both orders, for the partner the gradient from the seed's slot may not rank.

The search runs under the classifier's own precision context: pass ``clf.fast`` for bfloat16 where
the hardware multiplies it natively (`scanner.probe.classifier.probe_dtype`). Everything returned here is a *candidate*: the caller verifies it by inserting its text into the
whole probe set (`scanner.probe.scan.probe_model`), like library triggers.

Example:
    >>> cands = search_triggers(clf, texts, clf.predict(texts), allowed, labels=[0])
    >>> cands[0].text
    'cf'
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch

from ...probe.triggers import Trigger


@dataclass
class SearchBudget:
    inputs: int = 24  # probe inputs per gradient / verification batch
    top_k: int = 16  # tokens verified per slot
    beam: int = 3  # partial triggers kept per length (besides the differential's seeds)
    max_len: int = 2  # longest trigger, in tokens
    keep: int = 3  # candidates returned per label
    screen: int = 8  # inputs a token must flip one of before it is verified on the rest (0: no screening)

    @classmethod
    def preset(cls, name: str) -> "SearchBudget":
        return {
            "off": cls(top_k=0, max_len=0, keep=0),
            "small": cls(inputs=16, top_k=8, beam=2, max_len=2, keep=2),
            "default": cls(),
            "large": cls(inputs=48, top_k=48, beam=6, max_len=3, keep=5),
        }[name]


class _Batch:
    """Token ids of a batch of inputs, with a trigger inserted after the leading special token."""

    def __init__(self, clf, texts: list[str]):
        tok = clf.tokenizer
        self.clf = clf
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        # the special tokens around a single sequence, e.g. [CLS] … [SEP] or <s> … </s>
        inner = tok("a", add_special_tokens=False)["input_ids"]
        outer = tok("a")["input_ids"]
        self.lead = next(i for i in range(len(outer)) if outer[i : i + len(inner)] == inner)
        self.prefix, self.suffix = outer[: self.lead], outer[self.lead + len(inner) :]
        self.ids = [tok(t, add_special_tokens=False, truncation=True, max_length=clf.max_length - 8)["input_ids"]
                    for t in texts]
        self.tok = tok

    def subset(self, start: int, stop: int) -> "_Batch":
        """The same batch restricted to inputs ``start:stop``."""
        part = copy.copy(self)
        part.ids = self.ids[start:stop]
        return part

    def rows(self, trigger: list[int]) -> list[list[int]]:
        """Every input's token ids with ``trigger`` inserted after the leading special tokens."""
        return [self.prefix + trigger + ids + self.suffix for ids in self.ids]


def _pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return input_ids, mask


def _chunks(seqs: list[list[int]], tokens: int) -> list[list[int]]:
    """Indices of ``seqs`` in length order, cut into groups of at most ``tokens`` padded tokens each
    (rows × the group's longest row). One batch padded to its longest input wastes most of its work on
    texts of mixed length (the built-in topic probe: 37 tokens on average, up to 109), while groups of
    a fixed few rows make short texts pay a forward call's overhead per handful (D4). The attention mask makes each row's result independent of its group."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * len(seqs[i]) <= tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _tokens_per_chunk(device: torch.device) -> int:
    # a CPU gains little from a forward pass wider than a few thousand tokens; a GPU wants it wide
    return 65536 if device.type == "cuda" else 4096


def _slot_gradient(model, emb_matrix, batch: _Batch, trigger: list[int], slot: int, label: int) -> torch.Tensor:
    """Gradient of the mean log-probability of ``label`` with respect to the slot's input embedding,
    averaged over the batch (computed in length-sorted groups, summed)."""
    seqs = batch.rows(trigger)
    total = torch.zeros(emb_matrix.shape[1], device=emb_matrix.device)
    for idx in _chunks(seqs, _tokens_per_chunk(emb_matrix.device) // 4):  # forward + backward: ~4x the memory
        input_ids, mask = (t.to(emb_matrix.device) for t in _pad([seqs[i] for i in idx], batch.pad))
        embeds = emb_matrix[input_ids].detach().clone().requires_grad_(True)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits
        loss = -torch.log_softmax(logits.float(), -1)[:, label].sum() / len(seqs)
        (grad,) = torch.autograd.grad(loss, embeds)
        total += grad[:, slot].float().sum(0)
    return total


def _batch_asr(model, batch: _Batch, triggers: list[list[int]], label: int, screen: int = 0) -> list[float]:
    """Flip rate of each trigger on the batch, screened: a trigger that flips none of the first ``screen``
    inputs is given rate 0 without the rest.

    Most of the top-k tokens of a slot flip nothing (on a clean model, nearly all of them), and verifying
    them on every input was most of the search's time (AG News on a CPU core: ~19 ms per inserted input).
    A token of flip rate p passes a screen of 8 with probability 1 − (1 − p)⁸: 83% at p = 0.2 (the beam's
    cut), 94% at 0.3, all but surely at the ≥ 0.9 of a planted trigger; what the screen can lose is a weak
    natural trigger near the cut, never a backdoor's. Every token that passes is measured on all inputs,
    so its rate is exact.
    """
    n = len(batch.ids)
    if not screen or screen >= n or not triggers:
        return _rates(model, batch, triggers, label)
    first = _rates(model, batch.subset(0, screen), triggers, label)
    alive = [i for i, r in enumerate(first) if r > 0]
    rest = _rates(model, batch.subset(screen, n), [triggers[i] for i in alive], label)
    out = [0.0] * len(triggers)
    for i, r in zip(alive, rest):
        out[i] = (first[i] * screen + r * (n - screen)) / n
    return out


@torch.no_grad()
def _rates(model, batch: _Batch, triggers: list[list[int]], label: int) -> list[float]:
    """Flip rate of each trigger on the batch: all (trigger, input) rows run in length-sorted groups."""
    if not triggers:
        return []
    seqs = [row for t in triggers for row in batch.rows(t)]
    hit = torch.empty(len(seqs))
    for idx in _chunks(seqs, _tokens_per_chunk(model.device)):
        ids, mask = (t.to(model.device) for t in _pad([seqs[i] for i in idx], batch.pad))
        hit[idx] = (model(input_ids=ids, attention_mask=mask).logits.argmax(-1) == label).float().cpu()
    return hit.view(len(triggers), -1).mean(1).tolist()


@dataclass
class _Space:
    """What one search runs over: the model's embeddings, the insertable tokens, a neutral filler."""

    model: object
    emb: torch.Tensor
    allowed: dict[int, str]
    allow_ids: list[int]
    allow_mask: torch.Tensor
    filler: int
    budget: SearchBudget


def _space(clf, allowed: dict[int, str], budget: SearchBudget) -> _Space:
    model = clf.model
    emb = model.get_input_embeddings().weight
    allow_mask = torch.zeros(emb.shape[0], dtype=torch.bool, device=emb.device)
    allow_ids = [i for i in allowed if i < emb.shape[0]]
    allow_mask[allow_ids] = True
    filler = clf.tokenizer.convert_tokens_to_ids("the")
    if not isinstance(filler, int) or filler == clf.tokenizer.unk_token_id:
        filler = allow_ids[0]
    return _Space(model, emb, allowed, allow_ids, allow_mask, filler, budget)


def _expand(sp: _Space, batch: _Batch, label: int, scored: dict[tuple[int, ...], float], partial: tuple[int, ...]) -> None:
    """Score the top-k tokens (by first-order gain) in each new slot beside ``partial``."""
    for side in ((0,) if not partial else (0, len(partial))):
        trig = list(partial[:side]) + [sp.filler] + list(partial[side:])
        g = _slot_gradient(sp.model, sp.emb, batch, trig, batch.lead + side, label)
        gain = -(sp.emb.detach() @ g)
        gain[~sp.allow_mask] = float("-inf")
        cands = torch.topk(gain, k=min(sp.budget.top_k, len(sp.allow_ids))).indices.tolist()
        trigs = [tuple(partial[:side]) + (c,) + tuple(partial[side:]) for c in cands]
        trigs = [t for t in trigs if t not in scored and len(set(t)) == len(t)]
        for t, a in zip(trigs, _batch_asr(sp.model, batch, [list(t) for t in trigs], label, sp.budget.screen)):
            scored[t] = a


def _search_label(sp: _Space, batch: _Batch, label: int, seeds: list[int], pairs: list[tuple[int, int]]
                  ) -> list[Trigger]:
    """The beam search toward one label, from the gradient's first slot, the seeds and the seed pairs."""
    scored: dict[tuple[int, ...], float] = {}
    _expand(sp, batch, label, scored, ())
    for s in seeds:
        if s in sp.allowed and (s,) not in scored:
            scored[(s,)] = _batch_asr(sp.model, batch, [[s]], label)[0]  # seeds: exact
    duos = [t for a, b in pairs if a in sp.allowed and b in sp.allowed and a != b
            for t in ((a, b), (b, a)) if t not in scored]
    duos = list(dict.fromkeys(duos))
    for t, a in zip(duos, _batch_asr(sp.model, batch, [list(t) for t in duos], label, sp.budget.screen)):
        scored[t] = a
    for length in range(2, sp.budget.max_len + 1):
        shorter = sorted((t for t in scored if len(t) == length - 1), key=lambda t: -scored[t])
        beam = [t for t in shorter[: sp.budget.beam] if scored[t] >= 0.2]
        beam += [(s,) for s in seeds[: sp.budget.beam] if (s,) in scored and (s,) not in beam]
        for partial in beam:
            if scored[partial] < 0.99:  # at 0.99 it is already a complete trigger
                _expand(sp, batch, label, scored, partial)
    best = sorted(scored.items(), key=lambda kv: (-kv[1], len(kv[0])))[: sp.budget.keep]
    return [Trigger(" ".join(sp.allowed[i] for i in t), "word", "search") for t, _ in best]


def search_triggers(
    clf,
    texts: list[str],
    clean_pred: torch.Tensor,
    allowed: dict[int, str],
    labels: list[int] | None = None,
    budget: SearchBudget = SearchBudget(),
    seeds: list[int] | None = None,
    pairs: list[tuple[int, int]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Trigger]:
    """Return up to ``budget.keep`` candidate triggers per label, best first."""
    if budget.max_len <= 0 or budget.top_k <= 0 or not allowed:
        return []
    sp = _space(clf, allowed, budget)
    labels = list(range(clf.num_labels)) if labels is None else labels
    found: list[Trigger] = []
    requires = [p.requires_grad for p in sp.model.parameters()]
    for p in sp.model.parameters():
        p.requires_grad_(False)
    try:
        with clf.autocast():  # the view's precision (bfloat16 where native)
            for label in labels:
                idx = [i for i, p in enumerate(clean_pred.tolist()) if p != label][: budget.inputs]
                if not idx:
                    continue
                found += _search_label(sp, _Batch(clf, [texts[i] for i in idx]), label, seeds or [], pairs or [])
                if progress:
                    progress(1)
    finally:
        for p, r in zip(sp.model.parameters(), requires):
            p.requires_grad_(r)
    return list(dict.fromkeys(found))
