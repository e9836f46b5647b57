"""Large kernels as a grid of tiles, each computed on its own (one cluster job per tile) and
gathered into the one HDF5 file every later stage reads.

A tile is a (row range) x (column range) piece of one kernel group, computed by
:func:`compute_to_hdf5` on those rows and columns into a file of its own (so it resumes like
any kernel after an interruption). Tile sides are whole multiples of the block size and tiles
start on block boundaries, so every kernel block is computed from exactly the same inputs as
in an untiled run: on the CPU the gathered kernel equals the untiled one bit for bit. For the
symmetric train x train group only the upper triangle of tiles (i <= j) is computed; the
gather mirrors it, as the untiled writer mirrors its blocks.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Mapping

import h5py
import numpy as np
import torch
from torch import nn

from .. import store
from ..tiles import tile_grid, tile_ranges
from ..utils import get_logger
from .engine import KernelOptions
from .forward import eval_mode, kernel_device
from .inputs import as_input_tensor
from .streaming import compute_to_hdf5, provenance

__all__ = ["TILE_GROUP", "tile_ranges", "tile_grid", "compute_tile", "gather_tiles"]

TILE_GROUP = "tile"  # the group name inside a tile file
_LOG = get_logger(__name__)


def _check_sizes(tile_size: int, block_size: int) -> None:
    if tile_size % block_size:
        raise ValueError(f"tile_size ({tile_size}) must be a multiple of block_size ({block_size}), so that "
                         "tiles hold whole blocks and equal an untiled kernel bit for bit")


def compute_tile(path: str | os.PathLike, model: nn.Module, x: Any, y: Any = None, *, kind: str,
                 tile: tuple[int, int], tile_size: int, block_size: int, attrs: Mapping[str, Any] | None = None,
                 **options: Any) -> None:
    """Compute tile ``tile`` = (i, j) of the kernel of ``x`` x ``y`` (``y=None``: x x x) into
    group :data:`TILE_GROUP` of ``path``; resumable like :func:`compute_to_hdf5`."""
    _check_sizes(tile_size, block_size)
    X = as_input_tensor(x, "x")
    symmetric = y is None
    Y = X if symmetric else as_input_tensor(y, "y")
    i, j = tile
    if (i, j) not in tile_grid(len(X), len(Y), tile_size, symmetric):
        raise ValueError(f"tile {tile} is not part of the {len(X)} x {len(Y)} grid of tile_size {tile_size}"
                         + (" (upper triangle only)" if symmetric else ""))
    (r0, r1), (c0, c1) = tile_ranges(len(X), tile_size)[i], tile_ranges(len(Y), tile_size)[j]
    cols = None if symmetric and i == j else Y[c0:c1]  # a diagonal tile is itself symmetric
    compute_to_hdf5(path, model, X[r0:r1], cols, kind=kind, group=TILE_GROUP, block_size=block_size,
                    attrs={**(attrs or {}), "tile": [i, j], "tile_size": tile_size}, **options)


def gather_tiles(path: str | os.PathLike, group: str, tiles: Mapping[tuple[int, int], str | os.PathLike],
                 model: nn.Module, x: Any, y: Any = None, *, kind: str, tile_size: int, block_size: int,
                 attrs: Mapping[str, Any] | None = None, **options: Any) -> None:
    """Write kernel group ``group`` of ``path`` from its tile files, with the provenance an
    untiled :func:`compute_to_hdf5` gives it; every tile must be the complete tile of this
    model, data and options (checked). ``tiles`` maps (i, j) of :func:`tile_grid` to a file."""
    _check_sizes(tile_size, block_size)
    X = as_input_tensor(x, "x")
    symmetric = y is None
    Y = X if symmetric else as_input_tensor(y, "y")
    grid = tile_grid(len(X), len(Y), tile_size, symmetric)
    if sorted(tiles) != sorted(grid):
        raise ValueError(f"{path}:{group}: tiles {sorted(tiles)} do not cover the grid {grid}")
    dev = kernel_device(model, options.pop("device", None))
    dtype = options.pop("dtype", torch.float32)
    opts = KernelOptions.build(kind, dtype=dtype, importance=options.pop("importance", None),
                               layers=options.pop("layers", None), **options)
    rows, cols = tile_ranges(len(X), tile_size), tile_ranges(len(Y), tile_size)
    with eval_mode(model):
        identity, extra, tail = provenance(model, opts, X, None if symmetric else Y, block_size, attrs, dev)
    N, M = len(X), len(Y)
    nb = (math.ceil(N / block_size), math.ceil(M / block_size))
    with h5py.File(path, "a") as f:
        if group in f:
            del f[group]  # a gather is not resumed: it is cheap next to the tiles
        grp, _ = store.open_kernel_group(f, group, identity, (N, M, *tail), (N, *tail), (M, *tail), nb, block_size,
                                         np.dtype(opts.dtype), extra)
        for (i, j), tile_path in sorted(tiles.items()):
            (r0, r1), (c0, c1) = rows[i], cols[j]
            diagonal = symmetric and i == j
            fp_rows = store.tensor_fingerprint(X[r0:r1])
            expected = {key: identity[key] for key in ("kind", "identity_options", "model_fingerprint", "block_size")}
            expected.update(data_fingerprint_x=fp_rows, same_data=diagonal,
                            data_fingerprint_y=fp_rows if diagonal else store.tensor_fingerprint(Y[c0:c1]))
            store.check_kernel(tile_path, TILE_GROUP, expected, normalised=False, symmetric=False)
            with h5py.File(tile_path, "r") as t:
                src = t[TILE_GROUP]
                block = src["kernel"][...]
                grp["kernel"][r0:r1, c0:c1] = block
                if symmetric and i != j:
                    grp["kernel"][c0:c1, r0:r1] = block.transpose(1, 0, 3, 2) if block.ndim == 4 else block.T
                if j == min(jj for ii, jj in grid if ii == i):  # the first tile of a row: row diagonals
                    grp["diag_x"][r0:r1] = src["diag_x"][...]
                    if symmetric:
                        grp["diag_y"][r0:r1] = src["diag_x"][...]
                    if "features_x" in src:
                        _copy_rows(grp, "features_x", src["features_x"], r0, N)
                if not symmetric and i == 0:  # the first row of tiles: column diagonals
                    grp["diag_y"][c0:c1] = src["diag_y"][...]
                    if "features_y" in src:
                        _copy_rows(grp, "features_y", src["features_y"], c0, M)
        grp["blocks_done"][...] = 1
        grp["diag_done"][...] = 1
        grp.attrs["complete"] = True
        grp.attrs["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        grp.attrs["tiles"] = len(grid)
        f.flush()
    _LOG.info("%s:%s gathered from %d tiles of %d", path, group, len(grid), tile_size)


def _copy_rows(grp: h5py.Group, name: str, src: h5py.Dataset, start: int, total: int) -> None:
    """Projected features of a tile's rows into the full-size dataset (created on first use)."""
    if name not in grp:
        grp.create_dataset(name, shape=(total,) + src.shape[1:], dtype=src.dtype, chunks=True, **store.CHECKSUMMED)
    grp[name][start : start + src.shape[0]] = src[...]
