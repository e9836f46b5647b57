"""The tile grid of a large kernel (pure Python: the Snakefile plans tile jobs with it).

A kernel group of ``n_rows`` x ``n_cols`` is cut into tiles of ``tile_size`` rows and
columns; a symmetric (train x train) kernel needs only the upper triangle of tiles.
"""
from __future__ import annotations

__all__ = ["tile_ranges", "tile_grid"]


def tile_ranges(n: int, tile_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each tile along an axis of length ``n``."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size <= 0:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}")
    return [(s, min(s + tile_size, n)) for s in range(0, n, tile_size)]


def tile_grid(n_rows: int, n_cols: int, tile_size: int, symmetric: bool) -> list[tuple[int, int]]:
    """(i, j) of every tile to compute; the upper triangle only for a symmetric kernel."""
    if symmetric and n_rows != n_cols:
        raise ValueError(f"a symmetric kernel is square, got {n_rows} x {n_cols}")
    rows, cols = len(tile_ranges(n_rows, tile_size)), len(tile_ranges(n_cols, tile_size))
    return [(i, j) for i in range(rows) for j in range(cols) if not (symmetric and j < i)]
