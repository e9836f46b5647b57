"""Seeded block random projections R (K x P) applied to per-sample gradients.

R is never materialised whole. Each parameter, viewed as (rows, row_length), is cut into
blocks of whole rows (about ``BLOCK_ELEMENTS`` entries); block b of parameter ``name`` is the
slice R[:, cols] transposed, drawn on the CPU from a ``torch.Generator`` seeded with a hash of
(seed, name, b). So the same seed gives the same R on CPU and on every GPU (GPU generators
depend on the device's launch configuration), and a parameter's block does not depend on
which other parameters exist.

For a factorised Linear gradient g^c = a (x) d^c, R g^c = sum_o d^c_o (R_o a): the product
with the input is shared by all C classes, which saves a factor ~C over projecting
materialised gradients (the paper's C N K P term becomes N K P + C N K dout).
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch

from .reps import DenseGrad, GradRep, OuterGrad

__all__ = ["PROJ_TYPES", "BLOCK_ELEMENTS", "BlockProjector", "block_seed"]

PROJ_TYPES = ("gaussian", "rademacher")
BLOCK_ELEMENTS = 4096  # parameter entries per R block (rounded to whole rows)
_MAX_TEMP = 1 << 26  # elements of the largest temporary a projection step may create


def block_seed(seed: int, name: str, block: int) -> int:
    """Deterministic 63-bit seed for block ``block`` of parameter ``name``."""
    digest = hashlib.blake2b(f"{seed}|{name}|{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """A parameter viewed as (rows, row_length)."""
    numel = math.prod(shape)
    rows = shape[0] if len(shape) >= 1 and shape[0] > 0 else 1
    return rows, numel // rows


class BlockProjector:
    """Generates blocks of R^T (rows of the flattened parameter x K) and projects gradients."""

    def __init__(self, proj_dim: int, proj_type: str, seed: int, device: torch.device, dtype: torch.dtype):
        if not isinstance(proj_dim, int) or proj_dim <= 0:
            raise ValueError(f"proj_dim must be a positive integer, got {proj_dim!r}")
        if proj_type not in PROJ_TYPES:
            raise ValueError(f"unknown proj_type {proj_type!r}; valid: {', '.join(PROJ_TYPES)}")
        self.proj_dim = proj_dim
        self.proj_type = proj_type
        self.seed = int(seed)
        self.device = device
        self.dtype = dtype

    def rows_per_block(self, shape: tuple[int, ...]) -> int:
        _, row_len = _rows(shape)
        return max(1, BLOCK_ELEMENTS // max(row_len, 1))

    def block(self, name: str, shape: tuple[int, ...], index: int) -> torch.Tensor:
        """Block ``index`` of sqrt(K) R^T for parameter ``name``: (rows_in_block * row_length, K)."""
        rows, row_len = _rows(shape)
        per = self.rows_per_block(shape)
        r0, r1 = index * per, min(rows, (index + 1) * per)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(block_seed(self.seed, name, index))
        size = ((r1 - r0) * row_len, self.proj_dim)
        if self.proj_type == "gaussian":
            block = torch.randn(size, generator=gen, dtype=torch.float32)
        else:
            block = torch.randint(0, 2, size, generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
        # The 1/sqrt(K) scale is applied to the (much smaller) projected output instead.
        return block.to(device=self.device, dtype=self.dtype)

    def blocks(self, name: str, shape: tuple[int, ...]) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (first row, last row + 1, R^T block) over a parameter."""
        rows, _ = _rows(shape)
        per = self.rows_per_block(shape)
        for index in range(math.ceil(rows / per)):
            yield index * per, min(rows, (index + 1) * per), self.block(name, shape, index)

    def dense_matrix(self, layout: list[tuple[str, tuple[int, ...]]]) -> torch.Tensor:
        """The whole R^T (P x K) for ``layout``; for tests and small models only."""
        full = torch.cat([blk for name, shape in layout for _, _, blk in self.blocks(name, shape)])
        return full / math.sqrt(self.proj_dim)

    # -- projecting representations -------------------------------------------------------
    def project(self, rep: GradRep) -> torch.Tensor:
        """R g^c for every sample and class: (B, C, K)."""
        return self._project_unscaled(rep).mul_(1.0 / math.sqrt(self.proj_dim))

    def _project_unscaled(self, rep: GradRep) -> torch.Tensor:
        B, C = rep.batch, rep.num_classes
        out = torch.zeros(B, C, self.proj_dim, dtype=self.dtype, device=self.device)
        if isinstance(rep, DenseGrad):
            offset = 0
            for name, shape in rep.layout:
                _, row_len = _rows(shape)
                for r0, r1, rt in self.blocks(name, shape):
                    cols = rep.g[:, :, offset + r0 * row_len : offset + r1 * row_len]
                    out += (cols.reshape(B * C, -1) @ rt).view(B, C, -1)
                offset += math.prod(shape)
            return out
        if rep.idx is not None:
            self._project_embedding(rep, out)
            return out
        self._project_outer(rep, out)
        return out

    def _project_outer(self, rep: OuterGrad, out: torch.Tensor) -> None:
        B, C, L, dout = rep.d.shape
        name, shape = rep.weight
        din_w = rep.din - (1 if rep.bias is not None else 0)
        a_w = rep.a[..., :din_w]
        share_inputs = L < C  # contract R with the inputs once for all classes
        for r0, r1, rt in self.blocks(name, shape):
            r = r1 - r0
            d_rows = rep.d[..., r0:r1]  # (B, C, L, r)
            if share_inputs:
                rt3 = rt.view(r, din_w, self.proj_dim)
                step = max(1, _MAX_TEMP // max(r * L * self.proj_dim, 1))
                for s in range(0, B, step):
                    e = min(B, s + step)
                    # v[o, (b,l), k] = sum_i a[b,l,i] R^T[(o,i), k]
                    v = torch.matmul(a_w[s:e].reshape(-1, din_w), rt3)
                    v = v.view(r, e - s, L, self.proj_dim).permute(1, 2, 0, 3).reshape(e - s, L * r, self.proj_dim)
                    dd = d_rows[s:e].reshape(e - s, C, L * r)
                    out[s:e] += torch.bmm(dd, v)
            else:
                step = max(1, _MAX_TEMP // max(C * r * din_w, 1))
                for s in range(0, B, step):
                    e = min(B, s + step)
                    g = torch.einsum("bli,bclo->bcoi", a_w[s:e], d_rows[s:e]).reshape((e - s) * C, r * din_w)
                    out[s:e] += (g @ rt).view(e - s, C, -1)
        if rep.bias is not None:
            d_bias = rep.d.sum(2)  # (B, C, dout)
            for r0, r1, rt in self.blocks(rep.bias, (dout,)):
                out += (d_bias[..., r0:r1].reshape(B * C, -1) @ rt).view(B, C, -1)

    def _project_embedding(self, rep: OuterGrad, out: torch.Tensor) -> None:
        B, C, L, dout = rep.d.shape
        name, shape = rep.weight
        src = rep.d.permute(0, 2, 1, 3).reshape(B, L, C * dout)
        for r0, r1, rt in self.blocks(name, shape):
            r = r1 - r0
            inside = (rep.idx >= r0) & (rep.idx < r1)
            if not bool(inside.any()):
                continue
            local = torch.where(inside, rep.idx - r0, torch.zeros_like(rep.idx))
            g = torch.zeros(B, r, C * dout, dtype=rep.d.dtype, device=rep.d.device)
            g.scatter_add_(1, local.unsqueeze(-1).expand(B, L, C * dout), src * inside.unsqueeze(-1).to(src.dtype))
            g = g.view(B, r, C, dout).permute(0, 2, 1, 3).reshape(B * C, r * dout)
            out += (g @ rt).view(B, C, -1)
