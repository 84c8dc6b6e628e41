"""Weight-space differential for causal LMs: which vocabulary tokens the target's first layer reacts to far
more than any peer's does, relative to the base.

Fine-tuning changes how the first layer reads a token: the token's embedding row (full fine-tunes) and the
projections that read it (full fine-tunes and LoRA adapters alike: an adapter leaves the embeddings as they
are and adds ``scale · B·A`` to the projections). For each vocabulary token v the change of the first
layer's input projections' output is exact and data-free:

    shift(v) = ‖ W'·norm'(e'_v) − W·norm(e_v) ‖  over q, k, v (input norm) and gate, up (post-attention
    norm, which sees the embedding plus the attention output: an approximation)

with primes for the fine-tune and none for the base. A trigger is what the poisoned model was trained to
notice, so its shift stands out; it is measured by its effect on the layer's output, not by raw movement
of weights, so a row moved where the normalisation removes it (a constant added to a row) scores nothing.
With tied input and output embeddings (SmolLM2), every answer word's row moves through the output side
too: raw row movement ranks them above the trigger, the first layer's reading of the row does not rank
them as high.

Score of token v: the target's shift divided by the largest peer shift plus a tenth of the target's
median shift (so tokens nobody moved do not divide by zero).

Example:
    >>> top = first_layer_outliers(target, [p1, p2, p3], allowed, top_k=5)
    >>> top[0].text
    'badmagic'
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...weights import WeightSet
from ...sources.model import is_adapter_folder
from ..classifier.differential import TokenScore, find_embedding_name

MODULES = (("self_attn.q_proj", "input_layernorm"), ("self_attn.k_proj", "input_layernorm"),
           ("self_attn.v_proj", "input_layernorm"), ("mlp.gate_proj", "post_attention_layernorm"),
           ("mlp.up_proj", "post_attention_layernorm"))
CHUNK = 4096  # vocabulary rows per step (bounded memory for a 150k vocabulary)


class FirstLayer:
    """A model's first-layer reading of each token: its embeddings, norms and input projections (full
    weights, or a base with a LoRA adapter's updates)."""

    def __init__(self, folder: Path, base: Path | None = None):
        self.adapter = is_adapter_folder(folder)
        self.ws = WeightSet.open(base if self.adapter else folder)
        self.lora = WeightSet.open(folder) if self.adapter else None
        self.scale = _scale(folder) if self.adapter else 1.0
        self.emb_name = find_embedding_name(self.ws)
        self.prefix = self.emb_name.rsplit("embed_tokens.weight", 1)[0] if self.emb_name else ""

    def weight(self, module: str) -> torch.Tensor | None:
        name = f"{self.prefix}layers.0.{module}.weight"
        if name not in self.ws.header:
            return None
        w = self.ws.get(name).float()
        if self.lora is not None:
            a_name = next((n for n in self.lora.names() if n.endswith(f"layers.0.{module}.lora_A.weight")), None)
            if a_name is not None:
                b = self.lora.get(a_name.replace("lora_A", "lora_B")).float()
                w = w + self.scale * b @ self.lora.get(a_name).float()
        return w

    def norm(self, name: str) -> torch.Tensor | None:
        full = f"{self.prefix}layers.0.{name}.weight"
        return self.ws.get(full).float() if full in self.ws.header else None

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.ws.get_rows(self.emb_name, start, stop).float()

    def close(self) -> None:
        self.ws.close()
        if self.lora is not None:
            self.lora.close()


def _scale(adapter: Path) -> float:
    cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    r, alpha = float(cfg.get("r", 8)), float(cfg.get("lora_alpha", cfg.get("r", 8)))
    return alpha / (r ** 0.5 if cfg.get("use_rslora") else r)


def _rms(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    x = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    return x * w if w is not None else x


def first_layer_shift(model: FirstLayer, base: FirstLayer) -> torch.Tensor:
    """Per vocabulary token: how much the model's first-layer projections of it differ from the base's."""
    pairs = [(model.weight(m), base.weight(m), model.norm(n), base.norm(n)) for m, n in MODULES]
    pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
    vocab = base.ws.header[base.emb_name].shape[0]
    out = torch.zeros(vocab)
    for start in range(0, vocab, CHUNK):
        stop = min(vocab, start + CHUNK)
        e_m, e_b = model.rows(start, stop), base.rows(start, stop)
        total = torch.zeros(stop - start)
        for w_m, w_b, n_m, n_b in pairs:
            total += (_rms(e_m, n_m) @ w_m.T - _rms(e_b, n_b) @ w_b.T).pow(2).sum(-1)
        out[start:stop] = total.sqrt()
    return out


def first_layer_outliers(target: Path, peers: list[Path], base: Path, allowed: dict[int, str], top_k: int = 5,
                         adapter_base: Path | None = None) -> list[TokenScore]:
    """The ``top_k`` insertable tokens whose first-layer reading the target changed most, relative to every peer.

    ``base`` is the base model's folder; ``adapter_base`` the base that adapters are applied to (the same)."""
    b = FirstLayer(base)
    if b.emb_name is None:
        return []
    models = [FirstLayer(p, adapter_base or base) for p in [target, *peers]]
    try:
        shifts = [first_layer_shift(m, b) for m in models]
    finally:
        for m in [b, *models]:
            m.close()
    t = shifts[0]
    if len(shifts) < 2 or not float(t.max()):
        return []
    others = torch.stack(shifts[1:]).max(0).values
    score = t / (others + 0.1 * t.median() + 1e-12)
    ids = [i for i in allowed if i < score.shape[0]]
    masked = torch.full_like(score, float("-inf"))
    masked[ids] = score[ids]
    top = torch.topk(masked, k=min(top_k, len(ids))).indices.tolist()
    return [TokenScore(i, allowed[i], float(score[i]), float(t[i])) for i in top]

