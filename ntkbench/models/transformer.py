"""One-layer transformer for modular addition (SPEC §4.2, last bullet; paper 003's next step).

Token + positional embedding → one attention block (``heads`` heads, residual) → MLP
(d_mlp, ReLU, residual) → unembedding; the p logits are read at the last position. LayerNorm
before the attention, the MLP and the unembedding is optional (``layer_norm``).

Every parameter lives in an ``nn.Linear``, ``nn.Embedding`` or ``nn.LayerNorm`` (positions go
through an Embedding on 0..L−1), so the kernel engine's factorised fast path covers the whole
network; ``impl="generic"`` computes the same kernels by ``torch.func``. Module names start with
the layer group they belong to (``embed``, ``attn``, ``mlp``, ``unembed``): see :func:`layer_group`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntkbench.models import register

__all__ = ["ModAddTransformer", "modadd_transformer", "layer_group", "LAYER_GROUPS", "tf_tokens"]

#: Layer groups in forward order; a parameter group (module name) belongs to its first component.
LAYER_GROUPS = ("embed", "attn", "mlp", "unembed")


def layer_group(module_name: str) -> str:
    """``"attn.q"`` → ``"attn"``: the layer group of a kernel parameter group (module name)."""
    group = module_name.split(".", 1)[0]
    if group not in LAYER_GROUPS:
        raise ValueError(f"parameter group {module_name!r} belongs to none of the layer groups {LAYER_GROUPS}")
    return group


def tf_tokens(pairs: torch.Tensor, p: int, equals_token: bool = True) -> torch.Tensor:
    """(N, 2) pairs (a, b) → (N, 2) or (N, 3) int64 token ids; "=" is token id p."""
    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    if not equals_token:
        return pairs.clone()
    return torch.cat([pairs, torch.full((pairs.shape[0], 1), p, dtype=torch.int64)], dim=1)


class _Embed(nn.Module):
    def __init__(self, vocab: int, seq_len: int, d_model: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        return self.tok(tokens) + self.pos(positions)


class _Attention(nn.Module):
    def __init__(self, d_model: int, heads: int, layer_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, L, D = h.shape
        x = self.ln(h)
        split = lambda t: t.view(B, L, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // self.heads), dim=-1)
        return h + self.o((att @ v).transpose(1, 2).reshape(B, L, D))


class _MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, layer_norm: bool) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.fc_in = nn.Linear(d_model, d_mlp)
        self.fc_out = nn.Linear(d_mlp, d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc_out(F.relu(self.fc_in(self.ln(h))))


class _Unembed(nn.Module):
    def __init__(self, d_model: int, p: int, layer_norm: bool) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.out = nn.Linear(d_model, p, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(h[:, -1]))


class ModAddTransformer(nn.Module):
    """Logits (N, p) of (a + b) mod p from token ids (N, L) (L = 2, or 3 with the "=" token).

    Floating inputs holding token ids are accepted and rounded (the matrix-free eNTK operator
    casts its inputs to the compute dtype).
    """

    def __init__(self, p: int, d_model: int, d_mlp: int, heads: int, layer_norm: bool, equals_token: bool) -> None:
        super().__init__()
        self.p, self.seq_len = p, 3 if equals_token else 2
        self.embed = _Embed(p + 1 if equals_token else p, self.seq_len, d_model)
        self.attn = _Attention(d_model, heads, layer_norm)
        self.mlp = _MLP(d_model, d_mlp, layer_norm)
        self.unembed = _Unembed(d_model, p, layer_norm)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.is_floating_point():
            tokens = tokens.round().long()
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"expected token ids of shape (N, {self.seq_len}), got {tuple(tokens.shape)}")
        return self.unembed(self.mlp(self.attn(self.embed(tokens))))


@register("modadd_transformer")
def modadd_transformer(p: int = 29, d_model: int = 64, d_mlp: int = 256, heads: int = 4,
                       layer_norm: bool = False, equals_token: bool = True) -> ModAddTransformer:
    """The 1-layer transformer; embeddings N(0, 1/d_model), Linear/LayerNorm PyTorch defaults."""
    if p < 2 or d_model < 1 or d_mlp < 1 or heads < 1 or d_model % heads:
        raise ValueError(f"modadd_transformer needs p >= 2, d_mlp >= 1 and d_model divisible by heads; "
                         f"got p={p}, d_model={d_model}, d_mlp={d_mlp}, heads={heads}")
    net = ModAddTransformer(p, d_model, d_mlp, heads, layer_norm, equals_token)
    for emb in (net.embed.tok, net.embed.pos):
        nn.init.normal_(emb.weight, std=1.0 / math.sqrt(d_model))
    return net
