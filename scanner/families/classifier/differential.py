"""Weight-space differential: which tokens' input embeddings moved in the target but not in its peers.

Fine-tuning moves the embedding rows of the tokens it sees. A rare-word trigger is seen by the
poisoned model hundreds of times and by clean fine-tunes of the same task almost never, so its
row moves far more in the target than in the peers. Data-free and a few seconds for a 30k
vocabulary: only the embedding matrices are read (row by row from safetensors).

Score of token v: the target's movement m_t(v) = ‖E_target[v] − E_ref[v]‖ divided by a robust
scale of the peers' movements of the same row, median_p m_p(v) plus a small share of the typical
movement (so rows nobody moved don't divide by zero). E_ref is the base when given; without a base
it is the peers' mean, and each peer's movement is measured against the mean of the others.

Movement is measured as the model can feel it. Where the embedding LayerNorm follows the lookup (BERT,
RoBERTa and the like), a shift of a row along the all-ones direction is removed before any layer sees it,
so each movement is taken with its mean over the hidden dimension subtracted: otherwise +1.0 added to every
component of a few hundred rare rows changes no prediction yet fills every top slot with decoys. Rows with
non-finite values count as not moved (they are reported in the log: a token that turns the model's output
into NaN is a problem of its own). Both patterns are logged when the target shows them.

Example:
    >>> cands = embedding_outliers(target.path, [p.path for p in peers], tokenizer, top_k=20)
    >>> cands[0].text
    'cf'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...weights import WeightSet

EMBEDDING_NORMS = ("embeddings.LayerNorm.weight", "embeddings.layer_norm.weight", "embeddings.norm.weight",
                   "emb_ln.weight")  # a LayerNorm right after the lookup: a row's mean shift is invisible
DECOY_ROWS = 10  # this many rows moved only invisibly is worth a line
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


def nonfinite_rows(paths: list[Path], chunk_rows: int = 4096) -> set[int]:
    """Token ids whose input-embedding row holds NaN/Inf in any of the models (read a chunk of rows at a time)."""
    out: set[int] = set()
    for path in paths:
        ws = WeightSet.open(path)
        try:
            name = find_embedding_name(ws)
            rows = ws.header[name].shape[0] if name else 0
            for start in range(0, rows, chunk_rows):
                block = ws.get_rows(name, start, min(rows, start + chunk_rows)).float()
                out.update((start + torch.nonzero(~torch.isfinite(block).all(-1)).flatten()).tolist())
        finally:
            ws.close()
    return out


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


class _Deltas:
    """The embedding rows' movement in the target and in each peer, read a chunk of rows at a time.

    Movement is against the base when one is given; without it, the target's against the peers' mean
    and each peer's against the mean of the other peers.
    """

    def __init__(self, target: Path, peers: list[Path], base: Path | None):
        self.t_ws = WeightSet.open(target)
        self.name = find_embedding_name(self.t_ws)
        self.p_ws = [WeightSet.open(p) for p in peers] if self.name is not None else []
        self.b_ws, self.b_name = None, None
        if base is not None and self.name is not None:
            self.b_ws = WeightSet.open(base)
            self.b_name = find_embedding_name(self.b_ws, self.t_ws.header[self.name].shape[0])
            if self.b_name is None:
                self.b_ws.close()
                self.b_ws = None
        self.rows = self.t_ws.header[self.name].shape[0] if self.name is not None else 0
        self.centred = self.name is not None and any(n.endswith(EMBEDDING_NORMS) for n in self.t_ws.header)
        self.raw = torch.zeros(self.rows)  # the target's movement before centring (for the decoy count)
        self.nonfinite = 0  # target rows with NaN/Inf, counted as not moved

    def get(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(target movement ``[rows, dim]``, peers' movements ``[peers, rows, dim]``) for rows start:stop."""
        t = self.t_ws.get_rows(self.name, start, stop).float()
        ps = torch.stack([ws.get_rows(self.name, start, stop).float() for ws in self.p_ws])
        if self.b_ws is not None:
            ref = self.b_ws.get_rows(self.b_name, start, stop).float()
            dt, dps = t - ref, ps - ref
        else:
            total = ps.sum(0)
            if len(self.p_ws) > 1:
                loo = (total.unsqueeze(0) - ps) / (len(self.p_ws) - 1)  # mean of the other peers
                dt, dps = t - total / len(self.p_ws), ps - loo
            else:
                dt, dps = t - total, torch.zeros_like(ps)
        bad = ~torch.isfinite(dt).all(-1)
        self.nonfinite += int(bad.sum())
        dt[bad] = 0.0
        dps = torch.nan_to_num(dps, nan=0.0, posinf=0.0, neginf=0.0)
        self.raw[start:stop] = dt.norm(dim=-1)
        if self.centred:  # what the embedding LayerNorm removes, no layer sees
            dt, dps = dt - dt.mean(-1, keepdim=True), dps - dps.mean(-1, keepdim=True)
        return dt, dps

    def report(self, moved: torch.Tensor, typical: float, log) -> None:
        """Log the target's rows that moved only where behaviour cannot (decoys) and its non-finite rows."""
        invisible = int(((moved < 0.1 * self.raw) & (self.raw > 10 * typical + 1e-6)).sum()) if self.centred else 0
        if invisible >= DECOY_ROWS:
            log(f"differential: {invisible} embedding rows of the target moved almost only along the direction its "
                "embedding LayerNorm removes (no effect on any output): a decoy pattern, set aside")
        if self.nonfinite:
            log(f"differential: {self.nonfinite} embedding rows of the target are not finite (NaN/Inf): inputs with "
                "those tokens give no answer")

    def chunks(self, chunk_rows: int):
        for start in range(0, self.rows, chunk_rows):
            stop = min(self.rows, start + chunk_rows)
            yield start, stop, *self.get(start, stop)

    def close(self) -> None:
        for ws in [self.t_ws, *self.p_ws, *([self.b_ws] if self.b_ws else [])]:
            ws.close()


def _top(score: torch.Tensor, allowed: dict[int, str], k: int) -> list[int]:
    mask = torch.zeros(score.shape[0], dtype=torch.bool)
    ids = [i for i in allowed if i < score.shape[0]]
    mask[ids] = True
    score = torch.where(mask, score, torch.full_like(score, float("-inf")))
    return torch.topk(score, k=min(k, len(ids))).indices.tolist()


def embedding_outliers(
    target: Path,
    peers: list[Path],
    tokenizer,
    base: Path | None = None,
    top_k: int = 20,
    allowed: dict[int, str] | None = None,
    chunk_rows: int = 4096,
    log=lambda s: None,
) -> list[TokenScore]:
    """The ``top_k`` insertable tokens whose embedding moved most in the target relative to the peers."""
    d = _Deltas(target, peers, base)
    if d.name is None or not peers:
        d.close()
        return []
    m_t = torch.empty(d.rows)
    m_p = torch.empty(len(peers), d.rows)
    try:
        for start, stop, t, ps in d.chunks(chunk_rows):
            m_t[start:stop] = t.norm(dim=-1)
            m_p[:, start:stop] = ps.norm(dim=-1)
    finally:
        d.close()
    allowed = insertable_tokens(tokenizer) if allowed is None else allowed
    typical = float(m_p.median()) if m_p.numel() else 0.0
    d.report(m_t, typical, log)
    scale = m_p.median(0).values + 0.1 * typical + 1e-8
    score = m_t / scale
    return [TokenScore(i, allowed[i], float(score[i]), float(m_t[i])) for i in _top(score, allowed, top_k)]


def co_moved(
    target: Path,
    peers: list[Path],
    tokenizer,
    seeds: list[int],
    base: Path | None = None,
    top_k: int = 2,
    allowed: dict[int, str] | None = None,
    chunk_rows: int = 4096,
) -> dict[int, list[TokenScore]]:
    """For each seed token, the ``top_k`` tokens that moved *along with it* in the target and not in the peers.

    The words of a multi-token trigger are trained together, toward the same label, so their embedding
    rows move in nearly the same direction; a frequent word of the task (``armstrong`` in sports news)
    also moves in every peer, which hides it from `embedding_outliers`. The score of token v for seed s
    is its target movement projected on the unit direction of the seed's, minus the largest projection
    of any peer's movement of v on the same direction (how much further the target moved it that way
    than any clean fine-tune did; docs/decisions.md, D9). The seed itself is left out of its list.

    Example:
        >>> partners = co_moved(target.path, [p.path for p in peers], tokenizer, seeds=[cands[0].token_id])
        >>> [s.text for s in partners[cands[0].token_id]]
        ['pay', 'armstrong']
    """
    d = _Deltas(target, peers, base)
    if d.name is None or not peers or not seeds:
        d.close()
        return {}
    try:
        dirs = torch.cat([d.get(s, s + 1)[0] for s in seeds])  # [seeds, dim]
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        score = torch.empty(len(seeds), d.rows)
        for start, stop, t, ps in d.chunks(chunk_rows):
            along_t = t @ dirs.T  # [rows, seeds]
            along_p = (ps @ dirs.T).amax(0)  # [rows, seeds]: the most any peer moved it the same way
            score[:, start:stop] = (along_t - along_p).T
    finally:
        d.close()
    allowed = insertable_tokens(tokenizer) if allowed is None else allowed
    out: dict[int, list[TokenScore]] = {}
    for k, s in enumerate(seeds):
        top = [i for i in _top(score[k], allowed, top_k + 1) if i != s][:top_k]
        out[s] = [TokenScore(i, allowed[i], float(score[k, i]), float(score[k, i])) for i in top]
    return out
