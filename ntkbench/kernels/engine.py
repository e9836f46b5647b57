"""The kernel engine: options, feature sources, block contractions.

Every kernel kind is a *feature source* (:class:`FeatureSource`) that turns a batch of inputs
into ``{part: [representation]}`` (parts = parameter groups for gradient kernels, layers for
Em); the kernel is the sum over parts of the representations' inner products (:mod:`.reps`),
normalised by the self-kernels for the cosine-normalised kinds. The sources are:

- :class:`ntkbench.kernels.fast.GradientEngine`: per-class gradients g^c (factorised fast
  path or torch.func, see :class:`Impl`);
- :class:`ProjectedSource`: those gradients through a :class:`ntkbench.kernels.projection.Projector`;
- :class:`ntkbench.kernels.activations.ActivationFeatures`: CK and Em activations.

:func:`ntkbench.kernels.compute` (in memory) and :func:`ntkbench.kernels.compute_to_hdf5`
(streamed, resumable) both drive these pieces; a new model family or kernel plugs in as a
source.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.func import functional_call

from .. import kinds as kind_registry
from ..utils import get_logger
from .activations import ActivationFeatures
from .fast import GradientEngine, Impl
from .forward import checked_forward
from .generic import class_scale, functional_state
from .inputs import cast_input, iter_batches
from .memory import feature_cache_bytes
from .projection import (
    GENERATOR, KRONECKER_ESTIMATOR, PROJ_TYPES, Projector, default_cache_bytes, make_projector,
)
from .reps import DenseGrad, GradRep, concat_reps, contract, prepare, self_kernel

__all__ = [
    "KINDS",
    "NORMALISED_KINDS",
    "PROJECTED_KINDS",
    "CACHE_BYTES",
    "FeatureSource",
    "KernelOptions",
    "NonFiniteKernelError",
    "ProjectedSource",
    "all_reps",
    "block_diag",
    "block_kernel",
    "block_rows",
    "cache_bytes",
    "check_budget_mb",
    "check_finite",
    "check_same_sample_shape",
    "kernel_in_memory",
    "make_source",
    "normalise",
    "reps_nbytes",
    "symmetric_kernel",
]

# Views of the kind registry (ntkbench.kinds), the one source of truth for what a kind is.
KINDS = kind_registry.kind_names()
"""Every kernel kind (the values of ``kind=``), in the registry's order."""
PROJECTED_KINDS = tuple(k for k, v in kind_registry.KINDS.items() if v.projected)
"""The kinds computed from projected gradients (``proj-*``: ``proj_dim``, ``proj_type``, ``seed`` apply)."""
NORMALISED_KINDS = tuple(k for k, v in kind_registry.KINDS.items() if v.normalised)
"""The cosine-normalised kinds (k(x, y) / sqrt(k(x, x) k(y, y)); unit diagonal for y = x)."""

# Half precision is refused (see KernelOptions): silently overflowing kernels are worse than none.
HALF_DTYPES = ("float16", "bfloat16")

CACHE_BYTES: int | None = None
"""Bytes of feature representations kept in memory and contracted in one go; None (the
default): a quarter of the job's memory, at least 2 GiB (:func:`.memory.feature_cache_bytes`)."""
_LOG = get_logger(__name__)


@dataclass
class KernelOptions:
    """Validated options of one kernel computation (see :func:`compute`)."""

    kind: str = "trntk"
    proj_dim: int = 10240
    proj_type: str = "gaussian"
    seed: int = 0
    layers: list[str] | None = None
    importance: list[float] | None = None
    batch_size: int = 256
    dtype: str = "float32"
    layerwise: bool = False
    impl: str = Impl.AUTO.value
    proj_cache_mb: int | None = None

    def __post_init__(self) -> None:
        info = kind_registry.kind_info(self.kind)  # a clear error for an unknown kind
        if info.projected:
            if isinstance(self.proj_dim, bool) or not isinstance(self.proj_dim, int) or self.proj_dim <= 0:
                raise ValueError(f"proj_dim must be a positive integer, got {self.proj_dim!r}")
            if self.proj_type not in PROJ_TYPES:
                raise ValueError(f"unknown proj_type {self.proj_type!r}; valid: {', '.join(PROJ_TYPES)}")
        check_budget_mb("proj_cache_mb", self.proj_cache_mb)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        self.impl = Impl.parse(self.impl).value  # stored as its string: provenance JSON is unchanged
        if self.layers is not None and self.kind != "em":
            raise ValueError(f"layers= applies to kind='em' only, not {self.kind!r}")
        if self.layerwise and not info.layerwise:
            raise ValueError(
                f"layerwise=True is not available for {self.kind!r}: "
                + ("a projection mixes all parameters (cross terms between groups), so it is not a sum over groups"
                   if info.projected else "the conjugate kernel is not a sum over layers")
            )
        if self.importance is not None and not info.needs_gradients:
            raise ValueError(f"importance= applies to gradient kernels, not {self.kind!r}")
        if self.importance is not None and not all(math.isfinite(v) and v >= 0 for v in self.importance):
            raise ValueError(f"importance= must hold finite, non-negative class weights, got {self.importance}")
        if self.dtype in HALF_DTYPES:
            raise ValueError(
                f"dtype {self.dtype} is not supported for kernels: a kernel value sums gradient products "
                "over every parameter, which overflows float16 (max 65504) and loses all but 2-3 digits "
                "in bfloat16; use float32 (the default) or float64"
            )
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if info.projected:
            self.proj_dim = int(self.proj_dim)
        else:  # irrelevant options are normalised away so provenance compares equal
            self.proj_dim, self.proj_type, self.seed, self.proj_cache_mb = 0, "", 0, None

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def info(self) -> kind_registry.KernelKind:
        return kind_registry.kind_info(self.kind)

    @property
    def entk(self) -> bool:
        return self.info.per_class_blocks

    @property
    def normalised(self) -> bool:
        return self.info.normalised

    @property
    def proj_cache_bytes(self) -> int | None:
        return None if self.proj_cache_mb is None else self.proj_cache_mb << 20

    def to_json(self) -> str:
        """All options, plus for projected kinds the random generator's version (and for the
        Kronecker projection its block structure's), so that a kernel file drawn with another
        generator or estimator is never taken for this one."""
        data = asdict(self)
        if self.info.projected:
            data["proj_generator"] = GENERATOR
            if self.proj_type == "kronecker":
                data["proj_estimator"] = KRONECKER_ESTIMATOR
        return json.dumps(data, sort_keys=True)

    @classmethod
    def build(cls, kind: str, *, dtype: torch.dtype = torch.float32, importance: Any = None, layers=None, **kw) -> "KernelOptions":
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
        imp = None if importance is None else [float(v) for v in torch.as_tensor(importance, dtype=torch.float64).flatten()]
        lay = None if layers is None else [str(n) for n in ([layers] if isinstance(layers, str) else layers)]
        return cls(kind=kind, dtype=str(dtype).removeprefix("torch."), importance=imp, layers=lay, **kw)


class NonFiniteKernelError(FloatingPointError):
    """A computed kernel holds NaN or inf; the message says which kernel and where."""


def check_budget_mb(name: str, value: Any) -> None:
    """A memory budget option in MB: None (the default budget) or an integer >= 0."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be None (default budget) or an integer >= 0, got {value!r}")


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteKernelError` if ``values`` holds NaN or inf (``what`` names it)."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        first = [int(i) for i in torch.nonzero(bad)[0]]
        raise NonFiniteKernelError(
            f"{what}: {int(bad.sum())} non-finite value(s) (NaN/inf), the first at index {first}. "
            "The network's gradients or activations overflow (diverged or badly scaled weights?)"
        )


@runtime_checkable
class FeatureSource(Protocol):
    """What a kernel is computed from: per-part representations of a batch of samples.

    ``reps(xb)`` maps an input batch ``xb`` (B, ...) to ``{part: [GradRep]}``; a kernel block
    between two batches is ``sum over parts and reps of contract(rep_x, rep_y)``
    (:func:`block_kernel`). ``whole_input`` says the source amortises a fixed cost over every
    sample it is given at once (the projection draws R once per call), so the drivers pass it
    all samples in one call and let it batch internally.
    """

    whole_input: bool

    def reps(self, xb: torch.Tensor) -> dict[str, list[GradRep]]:
        ...


class ProjectedSource:
    """Projected gradients R g^c as one dense part. R's tiles are generated on the device once
    per chunk of samples, or once in all when they fit the projector's cache budget
    (``KernelOptions.proj_cache_mb``); a chunk holds as many samples' gradients as
    ``chunk_bytes`` allows, so that the cost is amortised (for N = 1000 MLP/CNN features: one
    chunk). The budget follows the device (:func:`.projection.default_cache_bytes`: 1 GiB on
    the CPU, a quarter of the free memory on a GPU): with ResNet18's materialised gradients
    (447 MB per sample) a fixed 1 GiB would redraw all of R every two samples."""

    def __init__(self, engine: GradientEngine, projector: Projector, batch_size: int,
                 chunk_bytes: int):
        self.engine, self.projector, self.batch_size = engine, projector, batch_size
        self.chunk_bytes = chunk_bytes

    whole_input = True

    def _project(self, pending: dict[str, list[GradRep]]) -> torch.Tensor:
        # All groups in one pass: every tile of R is generated once for the whole chunk.
        return self.projector.project_many([concat_reps(reps) for reps in pending.values()])

    def reps(self, xb: torch.Tensor) -> dict[str, list[GradRep]]:
        outs: list[torch.Tensor] = []
        pending: dict[str, list[GradRep]] = {}
        size = 0
        for _, sub in iter_batches(xb, self.batch_size):
            for group, reps in self.engine.reps(sub).items():
                pending.setdefault(group, []).extend(reps)
                size += sum(r.nbytes() for r in reps)
            if size >= self.chunk_bytes:
                outs.append(self._project(pending))
                pending, size = {}, 0
        if pending:
            outs.append(self._project(pending))
        feats = torch.cat(outs)
        return {"projection": [DenseGrad(feats, [("projection", (feats.shape[2],))])]}


def make_source(model: nn.Module, opts: KernelOptions, device: torch.device, probe: torch.Tensor) -> FeatureSource:
    """The feature source for ``opts.kind``; ``probe`` (a few inputs) fixes C and checks shapes."""
    dtype = opts.torch_dtype
    params, others = functional_state(model, device, dtype)
    if not opts.info.needs_gradients:
        return ActivationFeatures(model, params, others, opts.kind, opts.layers)

    with torch.no_grad():
        logits = checked_forward(model, probe, lambda t: functional_call(model, {**others, **params}, (t,)))
    num_classes = logits.shape[1]
    scale = class_scale(opts.importance, num_classes, device, dtype)
    if opts.info.sum_over_classes:
        weights = torch.ones(num_classes, device=device, dtype=dtype) if scale is None else scale
        mix = (weights / math.sqrt(num_classes)).unsqueeze(1)  # pNTK: (1/C) <sum g, sum g>
    else:
        mix = None if scale is None else torch.diag(scale)
    engine = GradientEngine(model, params, others, impl=opts.impl, mix=mix)
    if opts.info.projected:
        projector = make_projector(opts.proj_dim, opts.proj_type, opts.seed, device, dtype, opts.proj_cache_bytes)
        return ProjectedSource(engine, projector, opts.batch_size, default_cache_bytes(device))
    return engine


def block_kernel(rx: dict[str, list[GradRep]], ry: dict[str, list[GradRep]], entk: bool, layerwise: bool):
    """Unnormalised kernel block, summed over parts (or ``{part: block}`` with ``layerwise``)."""
    parts: dict[str, torch.Tensor] = {}
    for name, reps_x in rx.items():
        reps_y = ry[name]
        value = None
        for a, b in zip(reps_x, reps_y):
            term = contract(a, b, entk)
            value = term if value is None else value + term
        parts[name] = value
    if layerwise:
        return parts
    total = None
    for value in parts.values():
        total = value if total is None else total + value
    return total


def block_diag(rx: dict[str, list[GradRep]], entk: bool) -> torch.Tensor:
    """Unnormalised self-kernels (B,) or (B, C, C) of a block's samples."""
    total = None
    for reps in rx.values():
        for rep in reps:
            term = self_kernel(rep, entk)
            total = term if total is None else total + term
    return total


def normalise(k: torch.Tensor, diag_x: torch.Tensor, diag_y: torch.Tensor) -> torch.Tensor:
    """k / sqrt(diag_x diag_y); a zero self-kernel (e.g. an all-dead embedding) gives 0, not NaN."""
    nx = diag_x.clamp_min(0).sqrt()
    ny = diag_y.clamp_min(0).sqrt()
    inv_x = torch.where(nx > 0, 1.0 / nx, torch.zeros_like(nx))
    inv_y = torch.where(ny > 0, 1.0 / ny, torch.zeros_like(ny))
    return k * inv_x.unsqueeze(1) * inv_y.unsqueeze(0)


def reps_nbytes(reps: dict[str, list[GradRep]]) -> int:
    """Bytes held by one block's representations."""
    return sum(r.nbytes() for rs in reps.values() for r in rs)


Blocks = list[dict[str, list[GradRep]]]


def cache_bytes() -> int:
    """The budget for the representations of all samples (``CACHE_BYTES`` where set)."""
    return feature_cache_bytes() if CACHE_BYTES is None else CACHE_BYTES


def all_reps(source: FeatureSource, data: torch.Tensor, step: int, device, dtype) -> Blocks | None:
    """Representations of every sample as a list of per-batch blocks (never concatenated:
    copying materialised gradients costs as much as a good part of contracting them), or
    None when they would exceed :func:`cache_bytes`."""
    blocks = []
    for start, chunk in iter_batches(data, step):
        blocks.append(source.reps(cast_input(chunk, device, dtype)))
        if start == 0 and reps_nbytes(blocks[0]) * math.ceil(data.shape[0] / step) > cache_bytes():
            return None
    return blocks


def _rows_of(reps: dict[str, list[GradRep]], start: int, stop: int) -> dict[str, list[GradRep]]:
    return {k: [r.rows(start, stop) for r in rs] for k, rs in reps.items()}


def block_rows(reps: dict[str, list[GradRep]]) -> int:
    """Samples in one block of representations."""
    return next(iter(reps.values()))[0].batch


def symmetric_kernel(blocks: Blocks, entk: bool, layerwise: bool, n: int):
    """K(X, X) (n, n) (or ``{part: kernel}``) from the representations of consecutive sample
    blocks, the upper triangle only (syrk-like), mirrored.

    Off-diagonal block pairs are one contraction each (large GEMMs); a diagonal block is cut
    into row panels, each contracted with the rest of its block, so about half of the
    diagonal blocks' flops are saved too.
    """
    blocks = [{k: [prepare(r, entk) for r in rs] for k, rs in b.items()} for b in blocks]
    sizes = [block_rows(b) for b in blocks]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    out: dict[str, torch.Tensor] = {}

    def store(piece, r0: int, c0: int, square: int) -> None:
        """Write a (rows, cols) piece (or {part: piece}) at (r0, c0) and mirror all but its
        first ``square`` columns."""
        for name, value in (piece.items() if layerwise else [("", piece)]):
            if name not in out:
                out[name] = value.new_empty((n, n) + tuple(value.shape[2:]))
            rows, cols = value.shape[:2]
            out[name][r0 : r0 + rows, c0 : c0 + cols] = value
            if cols > square:
                rest = value[:, square:]
                out[name][c0 + square : c0 + cols, r0 : r0 + rows] = rest.permute(1, 0, 3, 2) if entk else rest.T

    for i, bi in enumerate(blocks):
        size, s0 = sizes[i], starts[i]
        panel = max(64, math.ceil(size / 8))
        for a in range(0, size, panel):
            b = min(size, a + panel)
            store(block_kernel(_rows_of(bi, a, b), _rows_of(bi, a, size), entk, layerwise), s0 + a, s0 + a, b - a)
        for j in range(i + 1, len(blocks)):
            store(block_kernel(bi, blocks[j], entk, layerwise), s0, starts[j], 0)
    return out if layerwise else out[""]


def kernel_in_memory(source: FeatureSource, opts: KernelOptions, X: torch.Tensor, Y: torch.Tensor, same: bool, device):
    """(kernel or {part: kernel}, diag_x, diag_y), unnormalised."""
    dtype, entk, layerwise = opts.torch_dtype, opts.entk, opts.layerwise
    step = X.shape[0] if source.whole_input else opts.batch_size
    ry = all_reps(source, Y, max(step, Y.shape[0]) if source.whole_input else step, device, dtype)
    if same and ry is not None:
        kernel = symmetric_kernel(ry, entk, layerwise, Y.shape[0])
        # The self-kernels are the kernel's diagonal: no second pass over the features.
        total = None
        for k in (kernel.values() if layerwise else [kernel]):
            d = k.diagonal(0, 0, 1)
            d = d.permute(2, 0, 1) if entk else d
            total = d.clone() if total is None else total + d
        return kernel, total, None
    if ry is None:
        _LOG.info("features of %d samples exceed the %d MB cache; recomputing them per row block", Y.shape[0], cache_bytes() >> 20)
    rows, diag_x, diag_y = [], [], []
    for _, xb in iter_batches(X, step):
        rx = source.reps(cast_input(xb, device, dtype))
        diag_x.append(block_diag(rx, entk))
        cols = []
        y_blocks = ry if ry is not None else (source.reps(cast_input(yb, device, dtype)) for _, yb in iter_batches(Y, step))
        for rb in y_blocks:
            if len(rows) == 0:
                diag_y.append(block_diag(rb, entk))
            cols.append(block_kernel(rx, rb, entk, layerwise))
        rows.append({k: torch.cat([c[k] for c in cols], 1) for k in cols[0]} if layerwise else torch.cat(cols, 1))
    kernel = {k: torch.cat([r[k] for r in rows]) for k in rows[0]} if layerwise else torch.cat(rows)
    dx = torch.cat(diag_x)
    return kernel, dx, (None if same else torch.cat(diag_y))


def check_same_sample_shape(X: torch.Tensor, Y: torch.Tensor) -> None:
    """x and y must hold samples of one shape (a kernel compares like with like)."""
    if X.shape[1:] != Y.shape[1:]:
        raise ValueError(f"x and y hold samples of different shapes: {tuple(X.shape[1:])} and "
                         f"{tuple(Y.shape[1:])}; a kernel needs inputs of one shape")
