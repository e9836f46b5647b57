"""Seeded random projections R (K x P) of per-sample gradients, generated on the compute
device and identical on every device.

Two estimators of ⟨g, g'⟩ (SPEC section 1), selected by ``proj_type``:

* ``gaussian`` / ``rademacher`` (the paper's): R has i.i.d. N(0, 1) or +-1 entries, scaled
  by 1/sqrt(K). E[⟨Rg, Rg'⟩] = ⟨g, g'⟩; for Gaussian R the variance of ⟨Rg, Rg'⟩ is
  (|g|^2 |g'|^2 + ⟨g, g'⟩^2) / K (Johnson-Lindenstrauss). :class:`BlockProjector`.
* ``kronecker`` (LoGra, Choe et al. 2024): a different, structured estimator, see
  :class:`KroneckerProjector`. Far cheaper to apply, but not the paper's R.

How the dense R is generated. Entry R[k, j] of parameter ``name`` (j = index in the
parameter's flattened entries) is a pure function of (seed, name, k, j): the counter-based
Philox4x32-10 generator of :mod:`.philox`, keyed by a hash of (seed, name) and countered by
(j, k), turned into N(0, 1) deviates with IEEE-exact arithmetic only. So the same
(seed, K, type) gives bit-identical R on the CPU and on every GPU; a parameter's R does not
depend on which other parameters exist; R for K is the first K rows of R for any larger K;
and any tile can be drawn on the device where it is used (no host-to-device copy). The
generator's version (:data:`.philox.GENERATOR`) is part of a projected kernel's identity.

R is never materialised whole. Each parameter, viewed as (rows, row_length), is cut into row
blocks of whole rows (about ``BLOCK_ELEMENTS`` entries) and the K outputs into tiles of
``TILE_K``; tile (b, t) = R[t*TILE_K : (t+1)*TILE_K, entries of row block b]. The blocking
only bounds memory; it does not change any entry.

Cost and caching. Generating an entry takes ~110 elementwise integer/float64 operations
(Philox's 10 rounds, Box-Muller with polynomial log/sin/cos): cheap on a GPU (memory-bound,
~ms per 16M-entry tile), but on a CPU 3-5x slower than ``torch.randn`` (measured in
benchmarks/README.md). Tiles are therefore kept across :meth:`BlockProjector.project_many`
calls (chunks of samples, kernel row blocks, x and y) up to ``cache_bytes``: default
:func:`default_cache_bytes` (1 GiB on the CPU; a quarter of the free memory on a GPU).
Tiles beyond the budget are regenerated per call; values never depend on the cache.

Applying a tile. For a factorised Linear gradient g^c = a (x) d^c: R g^c = sum_o d^c_o (R_o a),
so the product with the inputs is shared by all C classes: one GEMM (B, din) x (din, TILE_K *
rows) per tile, the bias folded in as the constant input column, then a batched product with
d over the tile's rows (the paper's C N K P term becomes N K P + C N K dout). Its lower bound
is N K P multiply-adds: for P = 1e5, K = 1e4, N = 1e3, 2e12 flop, ~11 s at 180 GFLOP/s.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

from .philox import GENERATOR, gaussian_block, rademacher_block
from .reps import DenseGrad, GradRep, OuterGrad

__all__ = ["PROJ_TYPES", "DENSE_PROJ_TYPES", "GENERATOR", "BLOCK_ELEMENTS", "TILE_K", "Projector", "BlockProjector",
           "KroneckerProjector", "make_projector", "project_rows", "default_cache_bytes", "kronecker_plan",
           "KRONECKER_ESTIMATOR"]

DENSE_PROJ_TYPES = ("gaussian", "rademacher")  # i.i.d. entries: the paper's estimator
"""The ``proj_type`` values of a dense R with i.i.d. entries (the paper's estimator): :class:`BlockProjector`."""
PROJ_TYPES = DENSE_PROJ_TYPES + ("kronecker",)
"""Every valid ``proj_type``."""
# Version of the Kronecker estimator's block structure, part of a kronecker kernel's identity.
# v2: a weight and its bias are one [W | b] block on every path (v1 split them where the
# gradients were materialised, so the fast and generic paths gave different kernels).
KRONECKER_ESTIMATOR = "kronecker-blocks/v2"
"""Version of the Kronecker estimator's block structure, part of a kronecker kernel's identity."""
BLOCK_ELEMENTS = 1 << 16  # parameter entries per row block (rounded to whole rows)
"""Parameter entries per row block of R (rounded to whole rows)."""
TILE_K = 256  # projection outputs per tile
"""Projection outputs per tile of R."""
_MAX_TEMP = 1 << 25  # elements of the largest temporary a projection step may create
CPU_CACHE_BYTES = 1 << 30


def default_cache_bytes(device: torch.device) -> int:
    """Default budget for cached tiles of R: 1 GiB on the CPU, a quarter of the free memory
    of a CUDA device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 4
    return CPU_CACHE_BYTES


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """A parameter viewed as (rows, row_length)."""
    numel = math.prod(shape)
    rows = shape[0] if len(shape) >= 1 and shape[0] > 0 else 1
    return rows, numel // rows


def _draw(proj_type: str, seed: int, name: str, k0: int, k1: int, j0: int, j1: int, device) -> torch.Tensor:
    gen = gaussian_block if proj_type == "gaussian" else rademacher_block
    return gen(seed, name, k0, k1, j0, j1, device)


@runtime_checkable
class Projector(Protocol):
    """What projects per-sample gradient representations to ``proj_dim`` features (TRAK's
    ``AbstractProjector`` role). Implementations: :class:`BlockProjector` (i.i.d. Gaussian or
    Rademacher R, the paper's estimator) and :class:`KroneckerProjector` (LoGra's).

    ``project_many(reps)`` takes representations of disjoint parameter groups of the same B
    samples (C classes each) and returns the projection of their concatenation,
    (B, C, K') with K' = ``proj_dim`` (dense) or the Kronecker plan's total; ``project(rep)``
    is the one-group form. The same (seed, proj_dim, proj_type) must give the same values on
    every call, batch split and device.
    """

    proj_dim: int

    def project(self, rep: GradRep) -> torch.Tensor:
        ...

    def project_many(self, reps: list[GradRep]) -> torch.Tensor:
        ...


def _add_product(out: torch.Tensor, a: torch.Tensor, rt: torch.Tensor) -> None:
    """out (B, C, w) += a (B*C, cols) @ rt.T (cols, w): one in-place GEMM where ``out`` is
    contiguous (every tile's slab but a narrower last one)."""
    if out.is_contiguous():
        out.view(-1, out.shape[-1]).addmm_(a, rt.T)
    else:
        out += (a @ rt.T).view(out.shape)


class BlockProjector:
    """Generates tiles of R (K-tile x row block of a parameter) and projects gradients
    (a :class:`Projector`)."""

    def __init__(self, proj_dim: int, proj_type: str, seed: int, device: torch.device, dtype: torch.dtype,
                 cache_bytes: int | None = None):
        if not isinstance(proj_dim, int) or proj_dim <= 0:
            raise ValueError(f"proj_dim must be a positive integer, got {proj_dim!r}")
        if proj_type not in DENSE_PROJ_TYPES:
            raise ValueError(f"unknown proj_type {proj_type!r} for a dense projection; valid: {', '.join(DENSE_PROJ_TYPES)}")
        self.proj_dim = proj_dim
        self.proj_type = proj_type
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self.cache_bytes = default_cache_bytes(self.device) if cache_bytes is None else int(cache_bytes)
        self._cache: dict[tuple[str, int, int], torch.Tensor] = {}
        self._cached = 0
        self.tiles_generated = 0  # tiles drawn (cache misses), for tests and benchmarks

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
        key = (name, block, tile)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        _, row_len = _rows(shape)
        r0, r1 = self.row_blocks(shape)[block]
        k0 = tile * TILE_K
        out = _draw(self.proj_type, self.seed, name, k0, k0 + self.tile_width(tile), r0 * row_len, r1 * row_len,
                    self.device).to(self.dtype)
        self.tiles_generated += 1
        size = out.numel() * out.element_size()
        if self._cached + size <= self.cache_bytes:
            self._cache[key] = out
            self._cached += size
        return out

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
        # An embedding's gradient rows are the same for every tile: built once where they are
        # small (a large table's are rebuilt per tile instead, one row block at a time).
        embedding_rows = {i: list(self._embedding_rows(rep)) for i, rep in enumerate(reps)
                          if isinstance(rep, OuterGrad) and rep.idx is not None
                          and rep.batch * rep.num_classes * rep.din * rep.dout <= _MAX_TEMP}
        for t in range(T):
            w = self.tile_width(t)
            out = slabs[t, :, :, :w] if w < TILE_K else slabs[t]
            for i, rep in enumerate(reps):
                if isinstance(rep, DenseGrad):
                    self._project_dense(rep, t, out)
                elif rep.idx is not None:
                    self._project_embedding(rep, t, out, embedding_rows.get(i))
                else:
                    self._project_outer(rep, t, out)
        feats = slabs.permute(1, 2, 0, 3).reshape(B, C, T * TILE_K).mul_(1.0 / math.sqrt(self.proj_dim))
        return feats if T * TILE_K == self.proj_dim else feats[..., : self.proj_dim].contiguous()

    def _project_dense(self, rep: DenseGrad, t: int, out: torch.Tensor) -> None:
        g = rep.g.reshape(rep.batch * rep.num_classes, -1)  # canonical: contiguous
        # Consecutive row blocks (of one or several parameters: biases, norm weights) are
        # merged into one GEMM of up to BLOCK_ELEMENTS columns: a GEMM per small parameter
        # rewrote the whole (B C, TILE_K) output for a few columns.
        groups: list[tuple[int, list[torch.Tensor]]] = []  # (first column, tiles)
        width, offset = 0, 0
        for name, shape in rep.layout:
            _, row_len = _rows(shape)
            for b, (r0, r1) in enumerate(self.row_blocks(shape)):
                cols = (r1 - r0) * row_len
                if not groups or width + cols > BLOCK_ELEMENTS:
                    groups.append((offset + r0 * row_len, []))
                    width = 0
                groups[-1][1].append(self.tile(name, shape, b, t))  # (w, cols)
                width += cols
            offset += math.prod(shape)
        for start, tiles in groups:
            rt = tiles[0] if len(tiles) == 1 else torch.cat(tiles, dim=1)
            _add_product(out, g[:, start : start + rt.shape[1]], rt)

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

    def _embedding_rows(self, rep: OuterGrad):
        """(row block b, g_b) for every row block of an embedding table that holds a token of
        the batch: g_b (B*C, r*dout) its dense gradient rows, the tile's layout (k, (row, o))."""
        B, C, L, dout = rep.d.shape
        name, shape = rep.weight
        src = rep.d.permute(0, 2, 1, 3).reshape(B, L, C * dout)
        for b, (r0, r1) in enumerate(self.row_blocks(shape)):
            r = r1 - r0
            inside = (rep.idx >= r0) & (rep.idx < r1)
            if not bool(inside.any()):
                continue
            local = torch.where(inside, rep.idx - r0, torch.zeros_like(rep.idx))
            g = torch.zeros(B, r, C * dout, dtype=rep.d.dtype, device=rep.d.device)
            g.scatter_add_(1, local.unsqueeze(-1).expand(B, L, C * dout), src * inside.unsqueeze(-1).to(src.dtype))
            yield b, g.view(B, r, C, dout).permute(0, 2, 1, 3).reshape(B * C, r * dout)

    def _project_embedding(self, rep: OuterGrad, t: int, out: torch.Tensor, rows=None) -> None:
        name, shape = rep.weight
        for b, g in self._embedding_rows(rep) if rows is None else rows:
            _add_product(out, g, self.tile(name, shape, b, t))


# -- structured (Kronecker / LoGra) projection ---------------------------------------------
def _kron_dims(target: int, rows: int, cols: int) -> tuple[int, int]:
    """(k_out, k_in) for a (rows x cols) gradient matrix and a budget of ``target`` outputs:
    the same compression on both sides (k_out / k_in ~ rows / cols), k_out <= rows,
    k_in <= cols, k_out * k_in <= target."""
    k_out = min(rows, max(1, round(math.sqrt(target * rows / cols))))
    k_in = min(cols, max(1, target // k_out))
    k_out = min(rows, max(1, target // k_in))
    return k_out, k_in


def kronecker_plan(blocks: list[tuple[str, int, int]], proj_dim: int) -> list[tuple[str, int, int, int, int]]:
    """Split ``proj_dim`` among gradient blocks (name, rows, cols) equally (LoGra gives every
    layer the same k), except that a block never gets more than the rows * cols outputs that
    make it exact; what it leaves is shared among the others (water-filling, ties to the
    earlier block). Each share is then factored into (k_out, k_in) with :func:`_kron_dims`
    (cols = 1: a dense block of k_out outputs). Returns (name, rows, cols, k_out, k_in);
    sum of k_out * k_in <= proj_dim.

    An equal split beat shares proportional to the parameter count (or its square root) on
    the benchmark MLP and CNN: small layers (the output layer) carry a large part of the
    kernel, and a block's error falls only like 1/sqrt(k_out) + 1/sqrt(k_in)."""
    if proj_dim < len(blocks):
        raise ValueError(f"proj_dim={proj_dim} is smaller than the {len(blocks)} parameter blocks of a "
                         "kronecker projection (each needs at least one output)")
    cap = [r * c for _, r, c in blocks]
    share = [0] * len(blocks)
    active = [i for i in range(len(blocks))]
    left = proj_dim
    while active and left > 0:
        each = left // len(active)
        if each == 0:  # fewer outputs left than blocks: one more for the first ones
            for i in active[:left]:
                share[i] += 1
            break
        for i in list(active):
            give = min(each, cap[i] - share[i])
            share[i] += give
            left -= give
            if share[i] == cap[i]:
                active.remove(i)
    plan = []
    for (name, rows, cols), k in zip(blocks, share):
        if cols == 1:
            plan.append((name, rows, 1, min(k, rows), 1))
        else:
            plan.append((name, rows, cols, *_kron_dims(k, rows, cols)))
    return plan


class KroneckerProjector:
    """Structured projection (LoGra, Choe et al. 2024), a :class:`Projector`: a different
    estimator from the paper's i.i.d. Gaussian R, much cheaper to apply.

    A layer's weight gradient is a matrix G = sum_l d_l a_l^T (dout x din; Linear: l = one
    position, Conv: l = output positions and a_l the unfolded patches; the bias is the ones
    column of a, so [W | b] is one dout x (din + 1) matrix). It is projected as
    R_out G R_in^T / sqrt(k_out k_in) = sum_l (R_out d_l)(R_in a_l)^T / sqrt(k_out k_in), with
    R_out (k_out x dout) and R_in (k_in x din) i.i.d. N(0, 1): i.e. R = R_out (x) R_in applied
    to vec(G), never formed. Inputs and output gradients are projected separately, so the
    cost is O(N L (din k_in + C dout k_out + C k_out k_in)) instead of O(C N K P).
    Blocks are concatenated over layers; every other parameter (norm scales, biases without
    their weight) gets a dense Gaussian block. A materialised weight (convs, the generic path)
    is still factorised, with its bias as the last column as above, so the blocks and hence
    the kernel do not depend on which path computed a layer (:data:`KRONECKER_ESTIMATOR`).

    Dimensions. ``proj_dim`` = K is split equally among the blocks (capped at the size that
    makes a block exact, the rest shared among the others) and a block's share K_b is
    factored as k_out * k_in <= K_b with k_out / k_in ~ dout / din (:func:`kronecker_plan`);
    the feature dimension is sum_b k_out k_in <= K (slightly below K). A side whose k reaches its dimension (e.g.
    dout = 10 classes) is not projected (identity): exact on that side.

    Estimator. With R_out, R_in independent and E[R^T R] = k I for each factor,
    E[(R_out (x) R_in)^T (R_out (x) R_in)] / (k_out k_in) = I, so ⟨Rg, Rg'⟩ is unbiased for
    ⟨g, g'⟩ block by block and in total (checked numerically in tests/test_projection.py).
    Its variance is larger than a dense Gaussian R's of the same K, because the entries of
    R_out (x) R_in are products, not independent. For one block and rank-one gradients
    G = d a^T, G' = d' a'^T: ⟨Rg, Rg'⟩ = X Y with X = ⟨R_out d, R_out d'⟩ / k_out (mean
    x = ⟨d, d'⟩, variance v_out = (|d|^2 |d'|^2 + x^2) / k_out) and Y likewise for a (mean y,
    variance v_in), independent, so Var = x^2 v_in + y^2 v_out + v_out v_in, which falls like
    1/k_in + 1/k_out ~ 1/sqrt(K) for balanced factors, against
    (|g|^2 |g'|^2 + ⟨g, g'⟩^2) / K for the dense Gaussian R. Measured errors against exact
    trntk: benchmarks/README.md (benchmarks/projection.py). R depends on the split, so unlike
    the dense R, R for K is not a prefix of R for a larger K. Entries come from the same
    device-independent generator (streams ``name#kron-out``, ``name#kron-in``,
    ``name#kron-dense``).
    """

    def __init__(self, proj_dim: int, seed: int, device: torch.device, dtype: torch.dtype):
        if not isinstance(proj_dim, int) or proj_dim <= 0:
            raise ValueError(f"proj_dim must be a positive integer, got {proj_dim!r}")
        self.proj_dim = proj_dim
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self.proj_type = "kronecker"
        self.plan: list[tuple[str, int, int, int, int]] | None = None
        self._factors: dict[tuple[str, str, int, int], torch.Tensor] = {}

    def factor(self, name: str, side: str, k: int, width: int) -> torch.Tensor:
        """Unscaled factor (k, width) of block ``name``: side "out", "in" or "dense". A factor
        that would not reduce the dimension (k = width) is the identity times sqrt(k), which
        keeps the scaling and makes that side exact (no variance)."""
        key = (name, side, k, width)
        if key not in self._factors:
            if k >= width:
                r = torch.eye(width, dtype=self.dtype, device=self.device) * math.sqrt(width)
            else:
                r = gaussian_block(self.seed, f"{name}#kron-{side}", 0, k, 0, width, self.device).to(self.dtype)
            self._factors[key] = r
        return self._factors[key]

    @staticmethod
    def _pieces(reps: list[GradRep]) -> list[tuple[str, int, int, GradRep, tuple[int, int | None] | None]]:
        """(block name, rows, cols, rep, where) for every block of ``reps``: ``where`` is None
        for a factorised OuterGrad, else the offsets (weight, bias or None) of the block's
        entries in the rep's canonical (B, C, p) gradients.

        The blocks do not depend on how the gradients were computed: a weight (2-D or more)
        followed in the layout by its own bias (``<module>.bias``, one entry per row) is one
        [W | b] block, exactly as a factorised layer's weight with the ones column of its
        inputs; every other parameter is its own block. (So the fast path and the generic
        one, which may compute the same layer as an OuterGrad or as a DenseGrad, give the
        same estimator.)"""
        out = []
        for rep in reps:
            if isinstance(rep, OuterGrad) and rep.idx is None and not rep.transposed:
                out.append((rep.weight[0], rep.dout, rep.din, rep, None))
                continue
            offsets, offset = [], 0
            for name, shape in rep.layout:
                offsets.append(offset)
                offset += math.prod(shape)
            i, layout = 0, rep.layout
            while i < len(layout):
                name, shape = layout[i]
                if len(shape) < 2:
                    out.append((name, math.prod(shape), 1, rep, (offsets[i], None)))
                    i += 1
                    continue
                rows, cols = _rows(shape)
                nxt = layout[i + 1] if i + 1 < len(layout) else None
                if (nxt is not None and name.endswith("weight") and nxt[0] == name[: -len("weight")] + "bias"
                        and tuple(nxt[1]) == (rows,)):
                    out.append((name, rows, cols + 1, rep, (offsets[i], offsets[i + 1])))
                    i += 2
                else:
                    out.append((name, rows, cols, rep, (offsets[i], None)))
                    i += 1
        return out

    def project(self, rep: GradRep) -> torch.Tensor:
        return self.project_many([rep])

    def project_many(self, reps: list[GradRep]) -> torch.Tensor:
        """Kronecker-projected gradients of ``reps`` (disjoint parameter groups of the same
        samples): (B, C, sum_b k_out k_in). A parameter used twice (shared weights: one
        representation per use) is one block whose projections are summed, R (g1 + g2)."""
        pieces = self._pieces(reps)
        blocks: dict[str, tuple[int, int]] = {}
        for name, rows, cols, _, _ in pieces:
            if blocks.setdefault(name, (rows, cols)) != (rows, cols):
                raise ValueError(f"kronecker projection: parameter {name!r} appears as a {blocks[name]} and a "
                                 f"{(rows, cols)} gradient matrix")
        plan = kronecker_plan([(n, r, c) for n, (r, c) in blocks.items()], self.proj_dim)
        if self.plan is None:
            self.plan = plan
        elif plan != self.plan:
            raise ValueError("kronecker projection: the parameter blocks changed between batches "
                             f"({[p[:3] for p in self.plan]} then {[p[:3] for p in plan]})")
        dims = {name: (k_out, k_in) for name, _, _, k_out, k_in in plan}
        dense_cache: dict[int, torch.Tensor] = {}
        feats: dict[str, torch.Tensor] = {}
        for name, rows, cols, rep, where in pieces:
            B, C = rep.batch, rep.num_classes
            k_out, k_in = dims[name]
            if where is None:  # factorised: project inputs and output gradients separately
                a = rep.a @ self.factor(name, "in", k_in, cols).T  # (B, L, k_in)
                d = rep.d @ self.factor(name, "out", k_out, rows).T  # (B, C, L, k_out)
                if rep.positions > 1:
                    f = torch.einsum("bclo,bli->bcoi", d, a)
                else:
                    f = d[:, :, 0, :, None] * a[:, None, 0, None, :]
            else:
                if id(rep) not in dense_cache:
                    dense_cache[id(rep)] = rep.canonical() if isinstance(rep, DenseGrad) else rep.dense()
                full = dense_cache[id(rep)]
                at, bias_at = where
                if cols == 1:  # dense Gaussian block
                    f = full[:, :, at : at + rows] @ self.factor(name, "dense", k_out, rows).T
                else:
                    width = cols - (bias_at is not None)
                    g = full[:, :, at : at + rows * width].reshape(B * C, rows, width)
                    if bias_at is not None:  # [W | b], as the ones column of a factorised layer
                        g = torch.cat([g, full[:, :, bias_at : bias_at + rows].reshape(B * C, rows, 1)], dim=2)
                    r_in, r_out = self.factor(name, "in", k_in, cols), self.factor(name, "out", k_out, rows)
                    f = r_out @ (g @ r_in.T)  # (B*C, k_out, k_in)
            f = f.reshape(B, C, k_out * k_in)
            feats[name] = f if name not in feats else feats[name] + f
        scale = {name: 1.0 / math.sqrt(k_out * k_in) for name, _, _, k_out, k_in in plan}
        return torch.cat([feats[name] * scale[name] for name in blocks], dim=2)


def make_projector(proj_dim: int, proj_type: str, seed: int, device: torch.device, dtype: torch.dtype,
                   cache_bytes: int | None = None) -> Projector:
    """The projector of ``proj_type``: :class:`BlockProjector` (gaussian, rademacher) or
    :class:`KroneckerProjector` (kronecker)."""
    if proj_type == "kronecker":
        return KroneckerProjector(proj_dim, seed, device, dtype)
    return BlockProjector(proj_dim, proj_type, seed, device, dtype, cache_bytes)


def project_rows(G: torch.Tensor, layout: list[tuple[str, tuple[int, ...]]], proj_dim: int, seed: int,
                 proj_type: str = "gaussian") -> torch.Tensor:
    """``G R^T``: flattened per-sample vectors ``G`` (n, P) projected to (n, K), K = ``proj_dim``.

    ``layout`` is ``[(parameter name, shape), ...]`` in the order the P columns are laid out
    (it keys R's entries, so the result is the same R the ``proj-*`` kernels use for the same
    seed and parameter names). Computed on ``G``'s device in ``G``'s dtype; R is never
    materialised whole (dense ``proj_type`` only: gaussian or rademacher).
    """
    P = sum(int(torch.Size(s).numel()) for _, s in layout)
    if G.ndim != 2 or G.shape[1] != P:
        raise ValueError(f"G must be (n, {P}) for this layout, got {tuple(G.shape)}")
    projector = BlockProjector(int(proj_dim), proj_type, int(seed), G.device, G.dtype)
    return projector.project(DenseGrad(G.unsqueeze(1).contiguous(), layout))[:, 0, :]
