"""Small vision transformer on image patches (Dosovitskiy et al. 2021), sized for MNIST.

Images (N, C, H, W) are cut into non-overlapping ``patch``×``patch`` patches (row-major over
the (H/patch)×(W/patch) grid), each flattened in (C, patch, patch) order (the order of a
stride-``patch`` Conv2d's weight) to C·patch² values and embedded by one nn.Linear to ``dim``.
A class token is prepended (``pool="cls"``), learned position embeddings are added, then
``depth`` encoder layers; a final LayerNorm and a linear head read the class token
(``pool="cls"``) or the mean over the patch tokens (``pool="mean"``, no class token).

An encoder layer is the pre-LN block (``norm_first=True``, the ViT default)
``h = h + Attn(LN1(h)); h = h + MLP(LN2(h))``; ``norm_first=False`` gives the post-LN block
``h = LN1(h + Attn(h)); h = LN2(h + MLP(h))`` (and no final LayerNorm). Attention is
multi-head self-attention written out, ``softmax(q kᵀ / √(dim/heads)) v`` with nn.Linear q, k,
v and o (k without a bias: adding q·b_k to a whole row of scores leaves its softmax unchanged,
so that bias would have an exactly zero gradient); the MLP is Linear → GELU → Linear. No
batch statistics: a sample's logits do not depend on the rest of its batch.

Every parameter lives in an nn.Linear, nn.Embedding or nn.LayerNorm: the patch embedding is a
Linear (not a Conv2d), and the class token and the positions go through nn.Embedding on fixed
index tensors (0 for the class token, 0..T−1 for the positions, T = number of tokens), so the
kernel engine's factorised fast path covers the whole network; ``impl="generic"`` computes the
same kernels by ``torch.func``.

Sizes: with P = number of patches = (H/patch)(W/patch), T = P + 1 (``pool="cls"``) or P,
parameters = (C·patch² + 1)·dim + [dim] + T·dim + depth·(4·dim² + 2·dim·mlp_dim + 8·dim + mlp_dim)
+ [2·dim] + (dim + 1)·num_outputs (the bracketed class token and final LayerNorm as they
apply). The MNIST defaults (1×28×28, ten classes, patch 7, dim 32, depth 2, heads 4, mlp_dim 64,
``pool="cls"``): 16 patches, 17 tokens, 19,594 parameters.

Initialisation: Linear and LayerNorm as PyTorch's defaults; class token and position
embeddings truncated N(0, 0.02²) (ViT's).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ntkbench.models import register

__all__ = ["VisionTransformer", "vit", "patchify", "POOLS"]

POOLS = ("cls", "mean")


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) images → (B, (H/patch)(W/patch), C·patch²) flattened patches.

    Patches are ordered row-major over the patch grid; each is flattened in (C, patch, patch)
    order, so ``Linear.weight.view(dim, C, patch, patch)`` is the equivalent Conv2d's weight.
    """
    B, C, H, W = x.shape
    gh, gw = H // patch, W // patch
    x = x.reshape(B, C, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, gh * gw, C * patch * patch)


class _Embed(nn.Module):
    """Images (B, C, H, W) → tokens (B, T, dim): patch embedding, class token, positions."""

    def __init__(self, in_features: int, patch: int, num_patches: int, dim: int, cls_token: bool) -> None:
        super().__init__()
        self.patch_size = patch
        self.patch = nn.Linear(in_features, dim)
        self.cls = nn.Embedding(1, dim) if cls_token else None
        self.pos = nn.Embedding(num_patches + int(cls_token), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(patchify(x, self.patch_size))  # (B, P, dim)
        B, dev = h.shape[0], h.device
        if self.cls is not None:
            # An Embedding of a fixed (B, 1) index: the class token on the fast path.
            cls = self.cls(torch.zeros((B, 1), dtype=torch.int64, device=dev))
            h = torch.cat([cls, h], dim=1)
        positions = torch.arange(h.shape[1], device=dev).expand(B, -1)
        return h + self.pos(positions)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=False)  # softmax ignores a key bias: its gradient is exactly 0
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) → (B, T, dim)."""
        B, T, D = x.shape
        split = lambda t: t.reshape(B, T, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // self.heads), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(B, T, D))


class _MLP(nn.Module):
    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU()  # a module: activation modules are the default em layers
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, norm_first: bool, dropout: float) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = _MLP(dim, mlp_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            h = h + self.drop(self.attn(self.ln1(h)))
            return h + self.drop(self.mlp(self.ln2(h)))
        h = self.ln1(h + self.drop(self.attn(h)))
        return self.ln2(h + self.drop(self.mlp(h)))


class VisionTransformer(nn.Module):
    """Logits (N, num_outputs) of images (N, C, H, W) of the ``input_shape`` it was built for."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, patch: int, dim: int, depth: int,
                 heads: int, mlp_dim: int, norm_first: bool, pool: str, dropout: float) -> None:
        super().__init__()
        C, H, W = (int(v) for v in input_shape)
        self.input_shape, self.pool = (C, H, W), pool
        self.num_patches = (H // patch) * (W // patch)
        self.embed = _Embed(C * patch * patch, patch, self.num_patches, dim, cls_token=pool == "cls")
        self.embed_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_dim, norm_first, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"vit expects images (N, {', '.join(map(str, self.input_shape))}), "
                             f"got shape {tuple(x.shape)}")
        h = self.embed_drop(self.embed(x))
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return self.head(h[:, 0] if self.pool == "cls" else h.mean(1))


@register("vit")
def vit(input_shape: Sequence[int], num_outputs: int, patch: int = 7, dim: int = 32, depth: int = 2,
        heads: int = 4, mlp_dim: int = 64, norm_first: bool = True, pool: str = "cls",
        dropout: float = 0.0) -> VisionTransformer:
    """Small ViT over ``input_shape = (C, H, W)`` images; H and W must be multiples of ``patch``.

    Defaults suit MNIST (1×28×28 → 16 patches of 7×7; 19,594 parameters for ten classes).
    """
    if len(input_shape) != 3:
        raise ValueError(f"vit needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
    C, H, W = (int(v) for v in input_shape)
    if patch < 1 or H % patch or W % patch:
        raise ValueError(f"model.patch: {patch} must be a positive divisor of the image height {H} and width {W}")
    for key, value in (("dim", dim), ("depth", depth), ("heads", heads), ("mlp_dim", mlp_dim)):
        if int(value) < 1:
            raise ValueError(f"model.{key}: must be a positive integer, got {value}")
    if dim % heads:
        raise ValueError(f"model.heads: dim {dim} must be divisible by heads {heads}")
    if pool not in POOLS:
        raise ValueError(f"model.pool: {pool!r} is not one of {list(POOLS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    net = VisionTransformer((C, H, W), num_outputs, int(patch), int(dim), int(depth), int(heads), int(mlp_dim),
                            bool(norm_first), pool, float(dropout))
    for emb in (net.embed.cls, net.embed.pos):
        if emb is not None:
            nn.init.trunc_normal_(emb.weight, std=0.02)
    return net
