"""Representations of per-sample, per-class gradients of one parameter group, and their
inner products.

A group's gradients g_b^c (sample b, class c) are held either

* materialised, :class:`DenseGrad` ``g`` of shape (B, C, p), or
* factorised, :class:`OuterGrad`: g_b^c = sum_l a_{b,l} (x) d_{b,c,l}, the form of the weight
  gradient of a Linear/Conv/Embedding layer (a = layer input or unfolded patch, d = gradient
  at the layer output, l = sequence/spatial position). Then
  ⟨g_i^c, g_j^c'⟩ = sum_{l,l'} (a_il . a_jl') (d_icl . d_jc'l'), which for L = 1 is one
  (B x B') Gram of inputs times one Gram of output gradients: never P-sized per sample.

Kernel contractions pick per group the cheaper of the factorised and the materialised form.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Union

import torch

__all__ = [
    "DenseGrad", "OuterGrad", "GradRep", "contract", "self_kernel", "concat_reps", "map_classes", "prepare", "STATS",
]


@dataclass
class ContractionStats:
    """Flop estimate and wall time of all kernel contractions (read by the benchmarks)."""

    flops: float = 0.0
    seconds: float = 0.0

    def reset(self) -> None:
        self.flops, self.seconds = 0.0, 0.0


STATS = ContractionStats()

# Largest intermediate (elements) a factorised contraction may create before it is chunked.
_MAX_INTERMEDIATE = 1 << 25


@dataclass
class DenseGrad:
    """Materialised per-sample gradients ``g`` (B, C, p) of the parameters in ``layout``.

    ``layout`` lists (parameter name, shape) in the order their flattened entries appear.
    ``g`` may be a (B, C, p) view of class-major (C, B, p) storage (what one matmul per class
    writes without any copy); trNTK contractions use it as it is (one GEMM per class).
    A conv's gradients are stored the way its matmul writes them: with ``augmented`` the
    layout [(weight, (dout, ...)), (bias, (dout,))] is held as one (dout, din_w + 1) matrix
    [W | b] per sample and class (the patches carry a ones column, so the bias gradient comes
    out of the same product); with ``transposed`` that matrix is stored transposed. Inner
    products do not depend on the order of entries; :meth:`canonical` restores the layout
    order for the consumers that need it (projection, the autograd cross-check).
    """

    g: torch.Tensor
    layout: list[tuple[str, tuple[int, ...]]]
    augmented: bool = False
    transposed: bool = False

    @property
    def batch(self) -> int:
        return self.g.shape[0]

    @property
    def num_classes(self) -> int:
        return self.g.shape[1]

    @property
    def class_major(self) -> bool:
        return _is_class_major(self.g)

    def dense(self) -> torch.Tensor:
        return self.g

    def canonical(self) -> torch.Tensor:
        """(B, C, p) in ``layout`` order, sample-major and contiguous (copies unless it is)."""
        if not (self.augmented or self.transposed):
            return self.g.contiguous()
        B, C, _ = self.g.shape
        dout = self.layout[0][1][0]
        v = self.g.reshape(B, C, -1, dout).transpose(2, 3) if self.transposed else self.g.reshape(B, C, dout, -1)
        if not self.augmented:
            return v.reshape(B, C, -1)
        return torch.cat([v[..., :-1].reshape(B, C, -1), v[..., -1]], dim=2)

    def _like(self, g: torch.Tensor) -> "DenseGrad":
        return DenseGrad(g, self.layout, self.augmented, self.transposed)

    def sample_major(self) -> "DenseGrad":
        """The same gradients with each sample's (C, p) contiguous (entk contracts (B*C) rows)."""
        return self if self.g.is_contiguous() else self._like(self.g.contiguous())

    def rows(self, start: int, stop: int) -> "DenseGrad":
        return self._like(self.g[start:stop])

    def nbytes(self) -> int:
        return self.g.numel() * self.g.element_size()


@dataclass
class OuterGrad:
    """Factorised gradient g_b^c = sum_l a_{b,l} (x) d_{b,c,l} of one layer.

    Attributes:
        d: (B, C, L, dout) gradients at the layer output (per class, per position).
        a: (B, L, din) layer inputs/patches; when ``bias`` is set its last column is the
            constant 1, so the bias gradient sum_l d_l comes out of the same product.
        idx: alternative to ``a`` for embeddings: (B, L) token ids, a = one-hot(idx); then
            ``din`` is the vocabulary size.
        din: width of ``a`` (including the bias column) or the vocabulary size.
        weight: (name, shape) of the weight; its flattened layout is (dout, din_w) for
            Linear/Conv and (vocab, dout) for Embedding (``transposed``).
        bias: name of the bias parameter, or None.
    """

    d: torch.Tensor
    a: torch.Tensor | None
    idx: torch.Tensor | None
    din: int
    weight: tuple[str, tuple[int, ...]]
    bias: str | None = None
    transposed: bool = False
    _dense: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch(self) -> int:
        return self.d.shape[0]

    @property
    def num_classes(self) -> int:
        return self.d.shape[1]

    @property
    def positions(self) -> int:
        return self.d.shape[2]

    @property
    def dout(self) -> int:
        return self.d.shape[3]

    @property
    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        out = [self.weight]
        if self.bias is not None:
            out.append((self.bias, (self.dout,)))
        return out

    def rows(self, start: int, stop: int) -> "OuterGrad":
        return OuterGrad(
            self.d[start:stop],
            None if self.a is None else self.a[start:stop],
            None if self.idx is None else self.idx[start:stop],
            self.din,
            self.weight,
            self.bias,
            self.transposed,
            None if self._dense is None else self._dense[start:stop],
        )

    def nbytes(self) -> int:
        total = self.d.numel() * self.d.element_size()
        for t in (self.a, self.idx):
            if t is not None:
                total += t.numel() * t.element_size()
        return total

    def gram_inputs(self, other: "OuterGrad") -> torch.Tensor:
        """(B*L, B'*L') inner products of the inputs a (one-hot equality for embeddings)."""
        if self.idx is not None:
            return (self.idx.reshape(-1, 1) == other.idx.reshape(1, -1)).to(self.d.dtype)
        return self.a.reshape(-1, self.din) @ other.a.reshape(-1, other.din).T

    def dense(self) -> torch.Tensor:
        """Materialise (B, C, p) in the parameters' flattened layout (cached)."""
        if self._dense is not None:
            return self._dense
        B, C, L, dout = self.d.shape
        if self.idx is not None:
            # Scatter d onto the rows of the embedding table picked by each token, straight
            # into (B, C, vocab, dout): no reordering copy of the (mostly zero) result.
            g = torch.zeros(B, C, self.din, dout, dtype=self.d.dtype, device=self.d.device)
            g.scatter_add_(2, self.idx.view(B, 1, L, 1).expand(B, C, L, dout), self.d)
            g = g.view(B, C, -1)
        else:
            # One batched matmul: (B, C*dout, L) @ (B, L, din) -> (B, C, dout, din).
            d = self.d.permute(0, 1, 3, 2).reshape(B, C * dout, L)
            full = torch.bmm(d, self.a).view(B, C, dout, -1)
            if self.bias is not None:
                g = torch.cat([full[..., :-1].reshape(B, C, -1), full[..., -1]], dim=2)
            else:
                g = full.reshape(B, C, -1)
        self._dense = g
        return g


GradRep = Union[DenseGrad, OuterGrad]


def _is_class_major(g: torch.Tensor) -> bool:
    """Whether (B, C, p) ``g`` is a view of (C, B, p) storage (rows of one class contiguous)."""
    B, C, p = g.shape
    return C > 1 and B > 1 and g.stride(2) == 1 and g.stride(0) == p and g.stride(1) >= B * p


def map_classes(rep: GradRep, mix: torch.Tensor | None) -> GradRep:
    """Apply a linear map over classes, g'^{c'} = sum_c mix[c, c'] g^c (importance, pNTK sum)."""
    if mix is None:
        return rep
    if isinstance(rep, DenseGrad):
        return rep._like(torch.einsum("bcp,ce->bep", rep.g, mix))
    return OuterGrad(
        torch.einsum("bclo,ce->belo", rep.d, mix), rep.a, rep.idx, rep.din, rep.weight, rep.bias, rep.transposed
    )


def concat_reps(reps: list[GradRep]) -> GradRep:
    """Stack the representations of consecutive sample batches into one."""
    first = reps[0]
    if len(reps) == 1:
        return first
    if isinstance(first, DenseGrad):
        if all(r.class_major for r in reps):  # keep the storage class-major
            g = torch.cat([r.g.transpose(0, 1) for r in reps], dim=1).transpose(0, 1)
        else:
            g = torch.cat([r.g for r in reps])
        return first._like(g)
    return OuterGrad(
        torch.cat([r.d for r in reps]),
        None if first.a is None else torch.cat([r.a for r in reps]),
        None if first.idx is None else torch.cat([r.idx for r in reps]),
        first.din,
        first.weight,
        first.bias,
        first.transposed,
    )


def _weight_size(rep: OuterGrad) -> int:
    return math.prod(rep.weight[1]) + (rep.dout if rep.bias is not None else 0)


def _use_factorised(x: OuterGrad, y: OuterGrad, entk: bool) -> bool:
    """Flop estimate: factorised Grams vs materialising and contracting (B, C, p) gradients."""
    if x._dense is not None and y._dense is not None:
        return False
    C = x.num_classes
    Bx, By, Lx, Ly = x.batch, y.batch, x.positions, y.positions
    cls = C * C if entk else C
    factorised = Bx * By * Lx * Ly * (x.din + cls * x.dout)
    p = _weight_size(x)
    materialise = (0 if x._dense is not None else Bx * Lx * C * p) + (0 if y._dense is not None else By * Ly * C * p)
    dense = materialise + Bx * By * cls * p
    return factorised <= dense


def _contract_dense(gx: torch.Tensor, gy: torch.Tensor, entk: bool) -> torch.Tensor:
    Bx, C, p = gx.shape
    By = gy.shape[0]
    STATS.flops += 2.0 * Bx * By * C * p * (C if entk else 1)
    if not entk and (_is_class_major(gx) or _is_class_major(gy)):
        # sum_c G_x^c (G_y^c)^T, one GEMM per class on the class-major storage (no copy).
        xc, yc = gx.transpose(0, 1), gy.transpose(0, 1)
        out = xc[0] @ yc[0].T
        for c in range(1, C):
            out.addmm_(xc[c], yc[c].T)
        return out
    gx, gy = gx.contiguous(), gy.contiguous()
    if entk:
        return (gx.reshape(Bx * C, p) @ gy.reshape(By * C, p).T).view(Bx, C, By, C).permute(0, 2, 1, 3)
    return gx.reshape(Bx, -1) @ gy.reshape(By, -1).T


def _contract_factorised(x: OuterGrad, y: OuterGrad, entk: bool) -> torch.Tensor:
    Bx, C, Lx, dout = x.d.shape
    By, Ly = y.batch, y.positions
    gram_a = x.gram_inputs(y)  # (Bx*Lx, By*Ly)
    STATS.flops += 2.0 * Bx * Lx * By * Ly * ((0 if x.idx is not None else x.din) + (C * C if entk else C) * dout)
    if entk:
        dx = x.d.permute(0, 2, 1, 3).reshape(Bx * Lx * C, dout)
        dy = y.d.permute(0, 2, 1, 3).reshape(By * Ly * C, dout)
        gram_d = (dx @ dy.T).view(Bx, Lx, C, By, Ly, C)
        prod = gram_d * gram_a.view(Bx, Lx, 1, By, Ly, 1)
        return prod.sum(dim=(1, 4)).permute(0, 2, 1, 3)
    dx = x.d.permute(0, 2, 1, 3).reshape(Bx * Lx, C * dout)
    dy = y.d.permute(0, 2, 1, 3).reshape(By * Ly, C * dout)
    prod = (dx @ dy.T).mul_(gram_a)
    if Lx == 1 and Ly == 1:
        return prod
    return prod.view(Bx, Lx, By, Ly).sum(dim=(1, 3))


def prepare(rep: GradRep, entk: bool) -> GradRep:
    """Materialise ``rep`` now if that is how it will be contracted with itself, so that
    row slices of it (blocks) share one materialisation."""
    if isinstance(rep, OuterGrad) and not _use_factorised(rep, rep, entk):
        rep.dense()
    if isinstance(rep, DenseGrad) and entk:
        return rep.sample_major()  # once here rather than in every block's contraction
    return rep


def contract(x: GradRep, y: GradRep, entk: bool = False) -> torch.Tensor:
    """Kernel block between two representations of the same group.

    Returns sum_c ⟨g_i^c, g_j^c⟩ as (Bx, By), or with ``entk`` the full class blocks
    ⟨g_i^c, g_j^c'⟩ as (Bx, By, C, C).
    """
    start = time.perf_counter()
    try:
        if isinstance(x, OuterGrad) and isinstance(y, OuterGrad) and _use_factorised(x, y, entk):
            C = x.num_classes
            per_row = y.batch * x.positions * y.positions * (C * C if entk else 1)
            step = max(1, _MAX_INTERMEDIATE // max(per_row, 1))
            if step >= x.batch:
                return _contract_factorised(x, y, entk)
            return torch.cat([_contract_factorised(x.rows(s, s + step), y, entk) for s in range(0, x.batch, step)])
        return _contract_dense(x.dense(), y.dense(), entk)
    finally:
        STATS.seconds += time.perf_counter() - start


def self_kernel(x: GradRep, entk: bool = False) -> torch.Tensor:
    """Per-sample self-kernel: sum_c |g_b^c|^2 as (B,), or (B, C, C) with ``entk``."""
    if isinstance(x, OuterGrad) and x._dense is None:
        B, C, L, dout = x.d.shape
        if L == 1 and x.idx is None:
            sq_a = x.a[:, 0].pow(2).sum(-1)
            if entk:
                return sq_a.view(B, 1, 1) * torch.einsum("bco,beo->bce", x.d[:, :, 0], x.d[:, :, 0])
            return sq_a * x.d.pow(2).sum(dim=(1, 2, 3))
        if L * L * (x.din + C * C * dout) <= C * _weight_size(x) * (L + C):
            if x.idx is not None:
                gram_a = (x.idx.unsqueeze(2) == x.idx.unsqueeze(1)).to(x.d.dtype)
            else:
                gram_a = x.a @ x.a.transpose(1, 2)  # (B, L, L)
            if entk:
                gram_d = torch.einsum("bclo,bemo->blcme", x.d, x.d)
                return torch.einsum("blcme,blm->bce", gram_d, gram_a)
            gram_d = torch.einsum("bclo,bcmo->blm", x.d, x.d)
            return (gram_d * gram_a).sum(dim=(1, 2))
    g = x.dense()
    if entk:
        return torch.einsum("bcp,bep->bce", g, g)
    return g.pow(2).sum(dim=(1, 2))
