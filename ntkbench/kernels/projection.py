"""Seeded tiled random projections R (K x P) applied to per-sample gradients.

How R is generated (device-independent by construction). R is never materialised whole.
Each parameter, viewed as (rows, row_length), is cut into row blocks of whole rows (about
``BLOCK_ELEMENTS`` entries: ``rows_per_block = max(1, BLOCK_ELEMENTS // row_length)``), and the
K projection outputs into tiles of ``TILE_K`` consecutive outputs. Tile (b, t) of parameter
``name`` is R[t*TILE_K : (t+1)*TILE_K, entries of row block b], drawn as one row-major
``(TILE_K, entries)`` call of ``torch.randn`` (Gaussian) or ``torch.randint(0, 2)`` mapped to
+-1 (Rademacher) on the CPU from a ``torch.Generator`` seeded with
``block_seed(seed, name, b, t)`` (a blake2b hash); the last tile is drawn whole and cut at K.
So the same (seed, K, type) gives the same R on CPU and on every GPU (GPU generators depend
on the device's launch configuration), a parameter's R does not depend on which other
parameters exist, and R for K is the first K rows of R for any larger K. The 1/sqrt(K)
scale is applied to the projected output.

Each tile is generated ONCE per call of :meth:`BlockProjector.project` (i.e. once per
kernel computation when all features fit in memory) and applied to every sample. For a
factorised Linear gradient g^c = a (x) d^c: R g^c = sum_o d^c_o (R_o a), so the product with
the inputs is shared by all C classes: one GEMM (B, din) x (din, TILE_K * rows) per tile, the
bias folded in as the constant input column, then a batched product with d over the tile's
rows (the paper's C N K P term becomes N K P + C N K dout).
"""
from __future__ import annotations

import hashlib
import math

import torch

from .reps import DenseGrad, GradRep, OuterGrad

__all__ = ["PROJ_TYPES", "BLOCK_ELEMENTS", "TILE_K", "BlockProjector", "block_seed"]

PROJ_TYPES = ("gaussian", "rademacher")
BLOCK_ELEMENTS = 1 << 16  # parameter entries per row block (rounded to whole rows)
TILE_K = 256  # projection outputs per tile
_MAX_TEMP = 1 << 25  # elements of the largest temporary a projection step may create


def block_seed(seed: int, name: str, block: int, tile: int = 0) -> int:
    """Deterministic 63-bit seed for tile ``tile`` of row block ``block`` of parameter ``name``."""
    digest = hashlib.blake2b(f"{seed}|{name}|{block}|{tile}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """A parameter viewed as (rows, row_length)."""
    numel = math.prod(shape)
    rows = shape[0] if len(shape) >= 1 and shape[0] > 0 else 1
    return rows, numel // rows


class BlockProjector:
    """Generates tiles of R (K-tile x row block of a parameter) and projects gradients."""

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

    @property
    def num_tiles(self) -> int:
        return math.ceil(self.proj_dim / TILE_K)

    def tile_width(self, tile: int) -> int:
        return min(TILE_K, self.proj_dim - tile * TILE_K)

    def rows_per_block(self, shape: tuple[int, ...]) -> int:
        _, row_len = _rows(shape)
        return max(1, BLOCK_ELEMENTS // max(row_len, 1))

    def row_blocks(self, shape: tuple[int, ...]) -> list[tuple[int, int]]:
        """(first row, last row + 1) of every row block of a parameter."""
        rows, _ = _rows(shape)
        per = self.rows_per_block(shape)
        return [(r0, min(rows, r0 + per)) for r0 in range(0, rows, per)]

    def tile(self, name: str, shape: tuple[int, ...], block: int, tile: int) -> torch.Tensor:
        """Unscaled tile of R: (tile_width(tile), rows_in_block * row_length), on the device."""
        _, row_len = _rows(shape)
        r0, r1 = self.row_blocks(shape)[block]
        gen = torch.Generator(device="cpu")
        gen.manual_seed(block_seed(self.seed, name, block, tile))
        size = (TILE_K, (r1 - r0) * row_len)
        if self.proj_type == "gaussian":
            out = torch.randn(size, generator=gen, dtype=torch.float32)
        else:
            out = torch.randint(0, 2, size, generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
        width = self.tile_width(tile)
        if width < TILE_K:
            out = out[:width]
        return out.to(device=self.device, dtype=self.dtype)

    def dense_matrix(self, layout: list[tuple[str, tuple[int, ...]]]) -> torch.Tensor:
        """The whole R^T (P x K) for ``layout``; for tests and small models only."""
        cols = []
        for name, shape in layout:
            for b in range(len(self.row_blocks(shape))):
                cols.append(torch.cat([self.tile(name, shape, b, t) for t in range(self.num_tiles)]).T)
        return torch.cat(cols) / math.sqrt(self.proj_dim)

    # -- projecting representations -------------------------------------------------------
    def project(self, rep: GradRep) -> torch.Tensor:
        """R g^c for every sample and class: (B, C, K)."""
        return self.project_many([rep])

    def project_many(self, reps: list[GradRep]) -> torch.Tensor:
        """sum over ``reps`` (disjoint parameter groups of the same samples) of R g^c: (B, C, K)."""
        B, C = reps[0].batch, reps[0].num_classes
        T = self.num_tiles
        # Materialised gradients in the parameters' own order, sample-major: once, not per tile.
        reps = [DenseGrad(r.canonical(), r.layout) if isinstance(r, DenseGrad) else r for r in reps]
        # One contiguous (B, C, TILE_K) slab per tile, so every update is an in-place GEMM.
        slabs = torch.zeros(T, B, C, TILE_K, dtype=self.dtype, device=self.device)
        for t in range(T):
            w = self.tile_width(t)
            out = slabs[t, :, :, :w] if w < TILE_K else slabs[t]
            for rep in reps:
                if isinstance(rep, DenseGrad):
                    self._project_dense(rep, t, out)
                elif rep.idx is not None:
                    self._project_embedding(rep, t, out)
                else:
                    self._project_outer(rep, t, out)
        feats = slabs.permute(1, 2, 0, 3).reshape(B, C, T * TILE_K).mul_(1.0 / math.sqrt(self.proj_dim))
        return feats if T * TILE_K == self.proj_dim else feats[..., : self.proj_dim].contiguous()

    def _project_dense(self, rep: DenseGrad, t: int, out: torch.Tensor) -> None:
        B, C = rep.batch, rep.num_classes
        out2 = out.reshape(B * C, -1) if out.is_contiguous() else None
        offset = 0
        for name, shape in rep.layout:
            _, row_len = _rows(shape)
            for b, (r0, r1) in enumerate(self.row_blocks(shape)):
                rt = self.tile(name, shape, b, t)  # (w, cols)
                cols = rep.g[:, :, offset + r0 * row_len : offset + r1 * row_len]
                if out2 is not None:
                    out2.addmm_(cols.reshape(B * C, -1), rt.T)
                else:
                    out += (cols.reshape(B * C, -1) @ rt.T).view(B, C, -1)
            offset += math.prod(shape)

    def _project_outer(self, rep: OuterGrad, t: int, out: torch.Tensor) -> None:
        B, C, L, dout = rep.d.shape
        name, shape = rep.weight
        din_w = rep.din - (1 if rep.bias is not None else 0)
        a_w = rep.a[..., :din_w]
        w = self.tile_width(t)
        rb = self.tile(rep.bias, (dout,), 0, t) if rep.bias is not None else None  # (w, dout)
        # dout <= BLOCK_ELEMENTS, so the bias is one row block; larger biases: separate GEMM.
        bias_separate = rb is not None and len(self.row_blocks((dout,))) > 1
        share_inputs = L < C  # contract R with the inputs once for all classes
        for b, (r0, r1) in enumerate(self.row_blocks(shape)):
            r = r1 - r0
            rt = self.tile(name, shape, b, t)  # (w, r * din_w), entries ordered (k, o, i)
            d_rows = rep.d[..., r0:r1]  # (B, C, L, r)
            if share_inputs:
                rmat = rt.view(w * r, din_w)
                fold = rb is not None and not bias_separate
                bias_row = rb[:, r0:r1].reshape(1, w * r) if fold else None
                step = max(1, _MAX_TEMP // max(L * w * r, 1))
                for s in range(0, B, step):
                    e = min(B, s + step)
                    a2 = a_w[s:e].reshape((e - s) * L, din_w)
                    # v[(b,l), (k,o)] = sum_i a[b,l,i] R[k,(o,i)] (+ R_bias[k,o]: the ones column)
                    v = torch.addmm(bias_row, a2, rmat.T) if fold else a2 @ rmat.T
                    v = v.view(e - s, L, w, r)
                    for l in range(L):
                        out[s:e].baddbmm_(d_rows[s:e, :, l, :], v[:, l].transpose(1, 2))
            else:
                step = max(1, _MAX_TEMP // max(C * r * din_w, 1))
                for s in range(0, B, step):
                    e = min(B, s + step)
                    g = torch.einsum("bli,bclo->bcoi", a_w[s:e], d_rows[s:e]).reshape((e - s) * C, r * din_w)
                    out[s:e] += (g @ rt.T).view(e - s, C, -1)
        if rb is not None and (bias_separate or not share_inputs):
            d_bias = rep.d.sum(2).reshape(B * C, dout)
            for b, (r0, r1) in enumerate(self.row_blocks((dout,))):
                rbt = rb if b == 0 and not bias_separate else self.tile(rep.bias, (dout,), b, t)
                out += (d_bias[:, r0:r1] @ rbt.T).view(B, C, -1)

    def _project_embedding(self, rep: OuterGrad, t: int, out: torch.Tensor) -> None:
        B, C, L, dout = rep.d.shape
        name, shape = rep.weight
        src = rep.d.permute(0, 2, 1, 3).reshape(B, L, C * dout)
        for b, (r0, r1) in enumerate(self.row_blocks(shape)):
            r = r1 - r0
            inside = (rep.idx >= r0) & (rep.idx < r1)
            if not bool(inside.any()):
                continue
            rt = self.tile(name, shape, b, t)
            local = torch.where(inside, rep.idx - r0, torch.zeros_like(rep.idx))
            g = torch.zeros(B, r, C * dout, dtype=rep.d.dtype, device=rep.d.device)
            g.scatter_add_(1, local.unsqueeze(-1).expand(B, L, C * dout), src * inside.unsqueeze(-1).to(src.dtype))
            g = g.view(B, r, C, dout).permute(0, 2, 1, 3).reshape(B * C, r * dout)
            out += (g @ rt.T).view(B, C, -1)
