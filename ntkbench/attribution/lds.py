"""Linear datamodeling score (LDS, SPEC §6; Park et al. 2023).

Given M training subsets ``S_j`` (boolean membership ``masks`` (M, N)), the outputs
``f_j(x)`` of the networks trained on them (``outputs`` (M, n_test), e.g. true-class margins)
and an attribution method's scores ``τ(x, i)`` (``scores`` (n_test, N)), the method predicts
``g_j(x) = Σ_{i∈S_j} τ(x, i)``, and ``LDS(x) = Spearman_j(f_j(x), g_j(x))``.

Spearman's ρ here is the Pearson correlation of average ranks (scipy's ``spearmanr``
convention for ties). A test point whose ``f`` or ``g`` is constant over j has no defined ρ:
its LDS is NaN, it is left out of the mean and SEM, and ``n_valid`` counts the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from ntkbench.metrics import mean_sem

__all__ = ["LDSResult", "predicted_outputs", "columnwise_spearman", "compute_lds", "lds_rows"]


@dataclass
class LDSResult:
    """Per-test LDS (n_test,) with NaNs, and mean ± SEM over the ``n_valid`` finite ones."""

    per_test: NDArray[np.float64]
    mean: float
    sem: float
    n_valid: int
    n_test: int
    n_subsets: int

    def as_dict(self) -> dict[str, float | int]:
        return {"lds": self.mean, "lds_sem": self.sem, "lds_n_valid": self.n_valid,
                "lds_n_test": self.n_test, "lds_n_subsets": self.n_subsets}


def predicted_outputs(masks: ArrayLike, scores: ArrayLike) -> NDArray[np.float64]:
    """``g_j(x) = Σ_{i∈S_j} τ(x, i)``: ``(M, n_test)`` from masks (M, N) and scores (n_test, N)."""
    m = np.asarray(masks)
    tau = np.asarray(scores, dtype=np.float64)
    if m.ndim != 2 or tau.ndim != 2 or m.shape[1] != tau.shape[1]:
        raise ValueError(f"masks (M, N) and scores (n_test, N) must share N, got {m.shape} and {tau.shape}")
    return m.astype(np.float64) @ tau.T


def columnwise_spearman(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """Spearman ρ between column k of ``a`` and column k of ``b`` (both (M, n)) for every k;
    NaN where either column is constant (or has fewer than 2 rows)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must both be (M, n), got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("LDS inputs contain NaN or infinite values")
    if a.shape[0] < 2:
        return np.full(a.shape[1], math.nan)
    ra = stats.rankdata(a, axis=0)
    rb = stats.rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    na = np.sqrt((ra**2).sum(axis=0))
    nb = np.sqrt((rb**2).sum(axis=0))
    valid = (np.ptp(a, axis=0) > 0) & (np.ptp(b, axis=0) > 0)
    rho = np.full(a.shape[1], math.nan)
    rho[valid] = (ra[:, valid] * rb[:, valid]).sum(axis=0) / (na[valid] * nb[valid])
    return np.clip(rho, -1.0, 1.0)


def compute_lds(scores: ArrayLike, masks: ArrayLike, outputs: ArrayLike) -> LDSResult:
    """LDS of one method: ``scores`` (n_test, N), ``masks`` (M, N) bool, ``outputs`` (M, n_test)."""
    g = predicted_outputs(masks, scores)
    f = np.asarray(outputs, dtype=np.float64)
    if f.shape != g.shape:
        raise ValueError(f"outputs must be (M, n_test) = {g.shape}, got {f.shape}")
    per_test = columnwise_spearman(f, g)
    mean, sem = mean_sem(per_test)
    return LDSResult(per_test, mean, sem, int(np.isfinite(per_test).sum()), f.shape[1], f.shape[0])


def lds_rows(methods: Mapping[str, ArrayLike], masks: ArrayLike, outputs: ArrayLike) -> list[dict]:
    """One dict per method: ``{"method", "lds", "lds_sem", "lds_n_valid", "lds_n_test",
    "lds_n_subsets"}`` (for a table)."""
    return [{"method": name, **compute_lds(s, masks, outputs).as_dict()} for name, s in methods.items()]
