"""Weight-space differential: which tokens' input embeddings moved in the target but not in its peers.

Fine-tuning moves the embedding rows of the tokens it sees. A rare-word trigger is seen by the
poisoned model hundreds of times and by clean fine-tunes of the same task almost never, so its
row moves far more in the target than in the peers. Data-free and a few seconds for a 30k
vocabulary: only the embedding matrices are read (row by row from safetensors).

Score of token v: the target's movement m_t(v) = ‖E_target[v] − E_ref[v]‖ divided by a robust
scale of the peers' movements of the same row, median_p m_p(v) plus a small share of the typical
movement (so rows nobody moved don't divide by zero). E_ref is the base when given; without a base
it is the peers' mean, and each peer's movement is measured against the mean of the others.

Example:
    >>> cands = embedding_outliers(target.path, [p.path for p in peers], tokenizer, top_k=20)
    >>> cands[0].text
    'cf'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..weights import WeightSet
from .triggers import Trigger

EMBEDDING_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "wte.weight", "shared.weight",
                      "word_embedding.weight", "embeddings.weight")


@dataclass
class TokenScore:
    token_id: int
    text: str
    score: float
    moved: float


def find_embedding_name(ws: WeightSet, vocab_size: int | None = None) -> str | None:
    for suffix in EMBEDDING_SUFFIXES:
        for name, info in ws.header.items():
            if name.endswith(suffix) and len(info.shape) == 2 and (vocab_size is None or info.shape[0] == vocab_size):
                return name
    return None


def insertable_tokens(tokenizer) -> dict[int, str]:
    """Vocabulary entries that survive a text round trip as exactly themselves (id -> text).

    Sub-word pieces (``##ing``), special and byte tokens cannot be inserted as a word; they are
    dropped. Checked by tokenizing every candidate text in one batch.
    """
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [i for i in sorted(vocab.values()) if i not in special]
    toks = tokenizer.convert_ids_to_tokens(ids)
    texts = [tokenizer.convert_tokens_to_string([t]).strip() for t in toks]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = {}
    for i, text, e in zip(ids, texts, enc):
        if text and e == [i] and any(c.isalnum() for c in text):
            out[i] = text
    return out


def embedding_outliers(
    target: Path,
    peers: list[Path],
    tokenizer,
    base: Path | None = None,
    top_k: int = 20,
    allowed: dict[int, str] | None = None,
    chunk_rows: int = 4096,
) -> list[TokenScore]:
    """The ``top_k`` insertable tokens whose embedding moved most in the target relative to the peers."""
    t_ws = WeightSet.open(target)
    name = find_embedding_name(t_ws)
    if name is None or not peers:
        return []
    p_ws = [WeightSet.open(p) for p in peers]
    b_ws = None
    b_name = None
    if base is not None:
        b_ws = WeightSet.open(base)
        b_name = find_embedding_name(b_ws, t_ws.header[name].shape[0])
        if b_name is None:
            b_ws = None
    rows = t_ws.header[name].shape[0]
    m_t = torch.empty(rows)
    m_p = torch.empty(len(peers), rows)
    for start in range(0, rows, chunk_rows):
        stop = min(rows, start + chunk_rows)
        t = t_ws.get_rows(name, start, stop).float()
        ps = torch.stack([ws.get_rows(name, start, stop).float() for ws in p_ws])
        if b_ws is not None:
            ref = b_ws.get_rows(b_name, start, stop).float()
            m_t[start:stop] = (t - ref).norm(dim=-1)
            m_p[:, start:stop] = (ps - ref).norm(dim=-1)
        else:
            total = ps.sum(0)
            m_t[start:stop] = (t - total / len(peers)).norm(dim=-1)
            if len(peers) > 1:
                loo = (total.unsqueeze(0) - ps) / (len(peers) - 1)  # mean of the other peers
                m_p[:, start:stop] = (ps - loo).norm(dim=-1)
            else:
                m_p[:, start:stop] = 0.0
    for ws in [t_ws, *p_ws, *([b_ws] if b_ws else [])]:
        ws.close()
    allowed = insertable_tokens(tokenizer) if allowed is None else allowed
    typical = float(m_p.median()) if m_p.numel() else 0.0
    scale = m_p.median(0).values + 0.1 * typical + 1e-8
    score = m_t / scale
    mask = torch.zeros(rows, dtype=torch.bool)
    ids = [i for i in allowed if i < rows]
    mask[ids] = True
    score = torch.where(mask, score, torch.full_like(score, float("-inf")))
    top = torch.topk(score, k=min(top_k, len(ids))).indices.tolist()
    return [TokenScore(i, allowed[i], float(score[i]), float(m_t[i])) for i in top]


def as_triggers(scores: list[TokenScore]) -> list[Trigger]:
    return [Trigger(s.text, "word", "differential") for s in scores]
