"""``compute_to_hdf5``: block-wise kernels written straight to HDF5, resumable.

Order of work: the self-kernel diagonals of x and y first (one pass over the data; for the
projected kinds this pass also stores the projected gradients, so R is generated once per
chunk of samples rather than once per kernel block), then the kernel in row x column blocks
of ``block_size``. Every finished block is flagged in the file and flushed, so a rerun with
the same settings skips it. Memory is bounded by the block size plus a cache of column-block
features capped at ``feature_cache_mb`` (default 1 GiB), not by N; ``feature_cache_mb=0``
bounds it by the block size alone, at the price of recomputing a column block's features for
every row block.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import h5py
import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .. import __version__
from .. import store
from ..utils import get_logger
from .engine import (
    KernelOptions,
    NonFiniteKernelError,
    block_diag,
    block_kernel,
    block_rows,
    check_budget_mb,
    check_same_sample_shape,
    make_source,
    normalise,
    reps_nbytes,
    symmetric_kernel,
)
from .forward import checked_forward, eval_mode, kernel_device
from .generic import functional_state
from .inputs import as_input_tensor, cast_input, iter_batches
from .reps import DenseGrad
from .threads import thread_budget

__all__ = ["compute_to_hdf5", "identity_options", "provenance"]

_LOG = get_logger(__name__)
# Default budget for column blocks' features kept across row blocks: fixed (the streaming path
# is the one whose memory a user bounds), unlike the in-memory path's share of the job's memory.
STREAM_CACHE_BYTES = 1 << 30
# Samples per batch of gradient representations within a block (see _run).
STREAM_BATCH = 256
# Options that do not change the values (only speed/placement) may differ on resume.
_NON_IDENTITY_OPTIONS = ("batch_size", "impl", "proj_cache_mb")


def identity_options(opts: KernelOptions) -> str:
    """The options JSON that identifies a kernel's values (checked on resume and on read)."""
    data = json.loads(opts.to_json())
    for key in _NON_IDENTITY_OPTIONS:
        data.pop(key, None)
    return json.dumps(data, sort_keys=True)


class _Progress:
    def __init__(self, total: int, done: int, enabled: bool, label: str):
        self.total, self.done, self.enabled, self.label = total, done, enabled, label
        self.start, self.start_done, self.last = time.perf_counter(), done, 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 10 or self.done == self.total):
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            _LOG.info("%s: blocks %d/%d (%.0f%%), %.2f blocks/s, eta %.0f s",
                      self.label, self.done, self.total, 100 * self.done / self.total, rate, eta)


def compute_to_hdf5(
    path: str | os.PathLike,
    model: nn.Module,
    x: Any,
    y: Any = None,
    *,
    kind: str,
    group: str = "kernel",
    block_size: int = 1024,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
    feature_cache_mb: int | None = None,
    **options: Any,
) -> str:
    """Compute a kernel block by block into HDF5 group ``group`` of ``path``; resumable.

    Args:
        path: HDF5 file (created if missing; other groups in it are left alone).
        model: as for :func:`ntkbench.kernels.compute`.
        x: as for :func:`ntkbench.kernels.compute`.
        y: as for :func:`ntkbench.kernels.compute` (y=None means y = x).
        kind: as for :func:`ntkbench.kernels.compute`.
        group: group name, e.g. "train_train" or "test_train".
        block_size: rows/columns per kernel block; bounds memory. Part of the resume identity.
        attrs: extra provenance attributes (non-scalars are stored as JSON).
        progress: log blocks done / total and the rate through ``logging``.
        feature_cache_mb: budget for column blocks' features kept across row blocks (None:
            ``STREAM_CACHE_BYTES`` = 1 GiB; 0: none, so peak memory does not grow with N). Speed
            only: the values and the resume identity do not depend on it.
        **options: proj_dim, proj_type, seed, layers, importance, batch_size, device, dtype,
            impl, proj_cache_mb, threads (see ``compute``). ``layerwise`` is not supported here.

    Writes datasets ``kernel``, ``diag_x``, ``diag_y`` (unnormalised self-kernels) and the
    provenance attributes (kind, options JSON, model and data fingerprints, ntkbench and
    torch versions, created time, ``complete``). Reopening a partial group with the same
    settings resumes it; different settings raise ``store.IncompatibleKernelFile``.
    Returns the group name.
    """
    if options.get("layerwise"):
        raise ValueError("compute_to_hdf5 does not support layerwise=True; use kernels.compute(..., layerwise=True)")
    options.pop("layerwise", None)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    check_budget_mb("feature_cache_mb", feature_cache_mb)
    cache_budget = STREAM_CACHE_BYTES if feature_cache_mb is None else feature_cache_mb << 20
    device = options.pop("device", None)
    dtype = options.pop("dtype", torch.float32)
    importance = options.pop("importance", None)
    layers = options.pop("layers", None)
    threads = options.pop("threads", None)  # speed only: not part of the options/identity
    unknown = set(options) - {"proj_dim", "proj_type", "seed", "batch_size", "impl", "proj_cache_mb"}
    if unknown:
        raise TypeError(f"compute_to_hdf5 got unknown option(s) {sorted(unknown)}")
    opts = KernelOptions.build(kind, dtype=dtype, importance=importance, layers=layers, **options)
    X = as_input_tensor(x, "x")
    same = y is None
    Y = X if same else as_input_tensor(y, "y")
    check_same_sample_shape(X, Y)
    dev = kernel_device(model, device)
    if os.path.exists(path) and not h5py.is_hdf5(path):
        raise ValueError(f"{path} exists and is not an HDF5 kernel file; delete it or write elsewhere")
    N, M = X.shape[0], Y.shape[0]
    nbr, nbc = math.ceil(N / block_size), math.ceil(M / block_size)
    np_dtype = np.dtype(opts.dtype)  # float32 or float64: KernelOptions refuses half precision

    with eval_mode(model), thread_budget(threads):
        source = make_source(model, opts, dev, cast_input(X[:1], dev, opts.torch_dtype))
        identity, extra, tail = provenance(model, opts, X, None if same else Y, block_size, attrs, dev)
        with h5py.File(path, "a") as f:
            grp, resumed = store.open_kernel_group(
                f, group, identity, (N, M, *tail), (N, *tail), (M, *tail), (nbr, nbc), block_size, np_dtype, extra
            )
            if resumed:
                if bool(grp.attrs.get("complete", False)):
                    _LOG.info("%s:%s is already complete", path, group)
                    return group
                _LOG.info("resuming %s:%s (%d/%d blocks done)", path, group, int(grp["blocks_done"][...].sum()), nbr * nbc)
            _run(grp, source, opts, X, Y, same, dev, block_size, progress, f"{os.fspath(path)}:{group}", cache_budget)
            grp.attrs["complete"] = True
            grp.attrs["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f.flush()
    return group


def provenance(model: nn.Module, opts: KernelOptions, X: torch.Tensor, Y: torch.Tensor | None, block_size: int,
               attrs: Mapping[str, Any] | None, dev: torch.device) -> tuple[dict, dict, tuple[int, ...]]:
    """(identity attributes, other attributes, class dims) of the kernel of ``X`` x ``Y``
    (``Y=None``: X x X): what every file of this kernel carries, however it was computed."""
    same = Y is None
    Y = X if same else Y
    num_classes = _num_classes(model, opts, dev, X) if opts.entk else None
    tail = (num_classes, num_classes) if opts.entk else ()
    fp_x = store.tensor_fingerprint(X)
    identity = {
        "kind": opts.kind,
        "identity_options": identity_options(opts),
        "model_fingerprint": store.model_fingerprint(model),
        "data_fingerprint_x": fp_x,
        "data_fingerprint_y": fp_x if same else store.tensor_fingerprint(Y),
        "block_size": block_size,
        "kernel_shape": json.dumps([X.shape[0], Y.shape[0], *tail]),
        "same_data": same,
    }
    extra = {
        "options": opts.to_json(),
        "ntkbench_version": __version__,
        "torch_version": torch.__version__,
        "normalised": opts.normalised,
        **(attrs or {}),
    }
    return identity, extra, tail


def _num_classes(model, opts, dev, X) -> int:
    params, others = functional_state(model, dev, opts.torch_dtype)
    with torch.no_grad():
        xb = cast_input(X[:1], dev, opts.torch_dtype)
        return checked_forward(model, xb, lambda t: functional_call(model, {**others, **params}, (t,))).shape[1]


def _check_block(values: np.ndarray, label: str, what: str) -> None:
    """Raise :class:`NonFiniteKernelError` naming file, group and block if ``values`` has NaN/inf."""
    bad = ~np.isfinite(values)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise NonFiniteKernelError(
            f"{label}: {what} holds {int(bad.sum())} non-finite value(s) (NaN/inf), the first at "
            f"{first} within the block; the group is left incomplete. The network's gradients or "
            "activations overflow (diverged or badly scaled weights?)"
        )


def _run(grp, source, opts, X, Y, same, dev, bs, progress, label, cache_budget) -> None:
    dtype, entk = opts.torch_dtype, opts.entk
    projected = opts.info.projected
    nbr, nbc = math.ceil(X.shape[0] / bs), math.ceil(Y.shape[0] / bs)

    # A block's representations come in batches of STREAM_BATCH rows, kept apart (never
    # concatenated): one backward over a whole 1024-row block of the ResNet member took 2.3x
    # the memory of batches of 256 (11.4 GB against 4.9 GB at N = 1000) and was slower. A
    # constant, not ``batch_size``: the values may depend on the block size (part of the resume
    # identity) but not on options left out of it.
    step = bs if source.whole_input else min(bs, STREAM_BATCH)

    def compute(data: torch.Tensor, sl: slice) -> list[dict]:
        return [source.reps(cast_input(chunk, dev, dtype)) for _, chunk in iter_batches(data[sl], step)]

    def features(data: torch.Tensor, which: str, b: int) -> list[dict]:
        sl = slice(b * bs, (b + 1) * bs)
        if projected:  # stored in the diagonal pass
            feats = torch.from_numpy(grp[f"features_{which}"][sl]).to(device=dev, dtype=dtype)
            return [{"projection": [DenseGrad(feats, [("projection", (feats.shape[2],))])]}]
        return compute(data, sl)

    def kernel_block(rx: list[dict], ry: list[dict], diagonal: bool) -> torch.Tensor:
        if diagonal:  # the upper triangle only, mirrored (half the contraction)
            return symmetric_kernel(rx, entk, False, sum(block_rows(r) for r in rx))
        return torch.cat([torch.cat([block_kernel(a, b, entk, False) for b in ry], 1) for a in rx])

    # 1. self-kernel diagonals (and projected features)
    passes = [("x", X, "diag_x", 0)] + ([] if same else [("y", Y, "diag_y", nbr)])
    todo = sum(int(grp["diag_done"][off + b]) == 0 for _, data, _, off in passes for b in range(math.ceil(data.shape[0] / bs)))
    bar = _Progress(len(grp["diag_done"]), len(grp["diag_done"]) - todo, progress, label + " diagonals")
    # With a single row block its features are kept for the kernel pass (half of all the
    # gradient work), at no extra memory: that pass would hold them anyway. (With several,
    # keeping row block 0 would hold two blocks through the diagonal pass: +0.7 GB on the
    # ResNet member's 256-row blocks, for one block's work in 10.)
    kept: dict[int, list[dict]] = {}
    for which, data, dname, offset in passes:
        for b in range(math.ceil(data.shape[0] / bs)):
            if grp["diag_done"][offset + b]:
                continue
            sl = slice(b * bs, (b + 1) * bs)
            chunks = compute(data, sl)
            if projected:
                feats = torch.cat([c["projection"][0].g for c in chunks])
                name = f"features_{which}"
                if name not in grp:
                    grp.create_dataset(name, shape=(data.shape[0],) + tuple(feats.shape[1:]), dtype=grp["kernel"].dtype,
                                       chunks=(min(bs, data.shape[0]),) + tuple(feats.shape[1:]), **store.CHECKSUMMED)
                grp[name][sl] = feats.cpu().numpy()
            diag = torch.cat([block_diag(c, entk) for c in chunks]).cpu().numpy()
            _check_block(diag, label, f"self-kernels of {which}, block {b} (rows {sl.start}:{sl.start + len(diag)})")
            grp[dname][sl] = diag
            if same:
                grp["diag_y"][sl] = diag
            store.mark_done(grp, "diag_done", offset + b)
            bar.step()
            if which == "x" and nbr == 1 and not projected:
                kept = {0: chunks}
    diag_x = torch.from_numpy(grp["diag_x"][...]).to(dev)
    diag_y = torch.from_numpy(grp["diag_y"][...]).to(dev)

    # 2. kernel blocks; for y = x only the upper triangle is computed and mirrored
    done = grp["blocks_done"][...].astype(bool)
    pending = [(i, j) for i in range(nbr) for j in range(nbc) if not done[i, j] and not (same and j < i)]
    bar = _Progress(nbr * nbc, int(done.sum()), progress, label)
    cache: dict[int, list[dict]] = {}
    cache_bytes = 0
    rows_reps: dict[int, list[dict]] = kept
    for i, j in pending:
        if i not in rows_reps:
            rows_reps = {i: features(X, "x", i)}
        rx = rows_reps[i]
        if same and i == j:
            ry = rx
        elif j in cache:
            ry = cache[j]
        else:
            ry = features(Y, "y" if not same else "x", j)
            size = sum(reps_nbytes(r) for r in ry)
            if cache_bytes + size <= cache_budget:
                cache[j], cache_bytes = ry, cache_bytes + size
        k = kernel_block(rx, ry, same and i == j)
        rs, cs = slice(i * bs, (i + 1) * bs), slice(j * bs, (j + 1) * bs)
        if opts.normalised:
            k = normalise(k, diag_x[rs], diag_y[cs])
        block = k.cpu().numpy()
        # Checked before it is written and flagged done (and before the unit diagonal is
        # forced), so a non-finite kernel is never marked complete.
        _check_block(block, label, f"kernel block ({i}, {j}) (rows {rs.start}:{rs.start + block.shape[0]}, "
                                   f"columns {cs.start}:{cs.start + block.shape[1]})")
        if opts.normalised and same and i == j:
            np.fill_diagonal(block, 1.0)
        grp["kernel"][rs, cs] = block
        n_done = 1
        if same and i != j:
            grp["kernel"][cs, rs] = block.transpose(1, 0, 3, 2) if entk else block.T
            grp["blocks_done"][j, i] = 1
            n_done = 2
        store.mark_done(grp, "blocks_done", (i, j))
        bar.step(n_done)
