"""Deterministic random training subsets for the linear datamodeling score (SPEC §6).

Subset ``j`` of an experiment is a function of ``(seed, j)`` only, so subset ``j`` is the same
whether ``M = 10`` or ``M = 64`` subsets are drawn (prefix stability), and a subset training
job can draw its own subset from ``j`` without reading anyone else's output. Two draws
(``draw``):

- ``"ntkbench"`` (default): the first ``k = round(fraction · N)`` entries of a random
  permutation of ``0..N-1`` from ``numpy.random.Generator(PCG64(SeedSequence([seed, j])))``;
- ``"dattri"``: dattri's LDS retraining (``dattri.model_util.retrain.retrain_lds``, v0.3.0):
  ``numpy.random.default_rng(seed + j).choice(N, int(N · fraction), replace=False)``, so that
  the same ``seed`` gives dattri's very subsets.

Either way every subset has exactly ``k`` points; masks and sorted indices are returned.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["DRAWS", "subset_size", "subset_indices", "subset_mask", "draw_subsets"]

#: How subset ``j`` is drawn from ``(seed, j)`` (see the module docstring).
DRAWS = ("ntkbench", "dattri")


def subset_size(n_train: int, fraction: float) -> int:
    """Points per subset, ``round(fraction · n_train)``, at least 1 and at most ``n_train``."""
    if not isinstance(n_train, (int, np.integer)) or n_train < 1:
        raise ValueError(f"n_train must be a positive integer, got {n_train!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"subset fraction must lie in (0, 1], got {fraction!r}")
    return int(min(n_train, max(1, round(float(fraction) * int(n_train)))))


def _generator(seed: int, index: int) -> np.random.Generator:
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and subset index must be non-negative, got {seed!r}, {index!r}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


def subset_indices(n_train: int, fraction: float, seed: int, index: int, draw: str = "ntkbench"
                   ) -> NDArray[np.int64]:
    """Sorted training indices of subset ``index``: shape ``(k,)``, ``k = subset_size(...)``
    (``int(fraction · N)`` for ``draw="dattri"``)."""
    k = subset_size(n_train, fraction)
    if draw == "dattri":
        k = max(1, int(int(n_train) * float(fraction)))
        if int(seed) < 0 or int(index) < 0:
            raise ValueError(f"seed and subset index must be non-negative, got {seed!r}, {index!r}")
        picked = np.random.default_rng(int(seed) + int(index)).choice(int(n_train), k, replace=False)
        return np.sort(picked).astype(np.int64)
    if draw != "ntkbench":
        raise ValueError(f"subset draw must be one of {DRAWS}, got {draw!r}")
    perm = _generator(seed, index).permutation(int(n_train))
    return np.sort(perm[:k]).astype(np.int64)


def subset_mask(n_train: int, fraction: float, seed: int, index: int, draw: str = "ntkbench") -> NDArray[np.bool_]:
    """Boolean membership of subset ``index``: shape ``(n_train,)``, exactly ``k`` True."""
    mask = np.zeros(int(n_train), dtype=bool)
    mask[subset_indices(n_train, fraction, seed, index, draw)] = True
    return mask


def draw_subsets(n_train: int, num_subsets: int, fraction: float = 0.5, seed: int = 0,
                 start: int = 0, draw: str = "ntkbench") -> NDArray[np.bool_]:
    """Membership matrix of subsets ``start .. start + num_subsets - 1``: ``(M, n_train)`` bool.

    Row ``r`` is :func:`subset_mask` ``(n_train, fraction, seed, start + r, draw)``.
    """
    if not isinstance(num_subsets, (int, np.integer)) or num_subsets < 0:
        raise ValueError(f"num_subsets must be a non-negative integer, got {num_subsets!r}")
    subset_size(n_train, fraction)  # validates
    masks = np.zeros((int(num_subsets), int(n_train)), dtype=bool)
    for r in range(int(num_subsets)):
        masks[r] = subset_mask(n_train, fraction, seed, start + r, draw)
    return masks
