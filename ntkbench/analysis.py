"""The surrogate analysis of a few test points (paper 001, Figures 1-2, appendices L and M).

For one trained network, its kernels and their fitted kGLMs:

* attribution (eq. 3): ``A(x, x_i)^c = W_{c,i} κ(x, x_i) + b_c / N`` from
  :meth:`ntkbench.surrogate.KernelGLM.attribution`, with ``Σ_i A(x, x_i)^c`` equal to the kGLM
  logit; summarised per training class (:func:`attribution_by_class`);
* exemplars (appendix M.2): the training points of highest kernel value (:func:`top_k_exemplars`);
* linear realisation (appendix L): the held-out pairs and fitted Φ of
  :func:`ntkbench.metrics.linear_realisation` (:func:`realisation_pairs`), the very numbers the
  surrogate stage reports as ``r2_<Φ>``.

Everything here is numpy in, numpy or pandas out; reading, checking and drawing live in
:mod:`ntkbench.stages.analysis` and :mod:`ntkbench.plots.analysis`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import special

from ntkbench.metrics import REALISATION_FUNCTIONS, linear_realisation, realisation_phi

__all__ = ["select_test_points", "check_attribution_sums", "attribution_by_class", "top_k_exemplars",
           "realisation_pairs", "ATTRIBUTION_STATS"]

#: Per-class statistics of the attributions (columns of :func:`attribution_by_class`).
ATTRIBUTION_STATS = ("n", "sum", "mean", "min", "q05", "q25", "median", "q75", "q95", "max")


def select_test_points(n_test: int, test_points: int | Sequence[int], seed: int) -> NDArray[np.int64]:
    """Rows of the test split to analyse.

    An int ``k`` draws ``min(k, n_test)`` distinct rows with ``numpy.random.default_rng(seed)``
    and returns them sorted (the same rows for the same data and seed, whatever the network); a
    list returns those rows in the order given. ``ValueError`` names a row outside ``0..n_test-1``.
    """
    if n_test < 1:
        raise ValueError("the test split is empty: no test point to analyse")
    if isinstance(test_points, (int, np.integer)):
        if test_points < 1:
            raise ValueError(f"test_points must be at least 1, got {test_points}")
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(n_test, size=min(int(test_points), n_test), replace=False)).astype(np.int64)
    rows = np.asarray(list(test_points), dtype=np.int64)
    bad = rows[(rows < 0) | (rows >= n_test)]
    if rows.size == 0 or bad.size:
        raise ValueError(f"test_points: {bad.tolist() or 'no rows'} not in the test split's rows 0..{n_test - 1}")
    if len(set(rows.tolist())) != rows.size:
        raise ValueError(f"test_points: {rows.tolist()} lists a row twice")
    return rows


def check_attribution_sums(attributions: ArrayLike, logits: ArrayLike, where: str = "") -> float:
    """Check eq. 3's identity ``Σ_i A(x, x_i)^c = kGLM(x)^c``; return the largest error.

    ``attributions`` (M, N, C_out), ``logits`` (M, C_out). The tolerance is relative to
    ``Σ_i |A|`` (float64 rounding of a sum of N terms); ``ValueError`` (naming ``where``) when
    it is exceeded: attributions that do not add up to the logit explain another model.
    """
    attr = np.asarray(attributions, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    if attr.ndim != 3 or z.shape != (attr.shape[0], attr.shape[2]):
        raise ValueError(f"{where}attributions {attr.shape} and logits {z.shape} must be (M, N, C) and (M, C)")
    error = np.abs(attr.sum(axis=1) - z)
    tolerance = 1e-9 * (1.0 + np.abs(attr).sum(axis=1))
    if not np.all(error <= tolerance):
        raise ValueError(f"{where}the attributions sum to the kGLM logits only up to {error.max():.3g} "
                         f"(tolerance {tolerance.max():.3g}): eq. 3 does not hold")
    return float(error.max())


def attribution_by_class(attributions: ArrayLike, y_train: ArrayLike, num_classes: int) -> pd.DataFrame:
    """Attributions of one test point summarised per (logit, training class).

    ``attributions`` (N, C_out) for the N training points; ``y_train`` (N,) their labels in
    ``0..num_classes-1``. One row per logit ``c`` (0..C_out-1) and training class ``j`` with
    :data:`ATTRIBUTION_STATS` over ``{A(x, x_i)^c : y_i = j}`` (quantiles linear, NaN for an
    empty class). ``sum`` over the classes of one logit is that logit.
    """
    attr = np.asarray(attributions, dtype=np.float64)
    labels = np.asarray(y_train).astype(np.int64)
    if attr.ndim != 2 or labels.shape != (attr.shape[0],):
        raise ValueError(f"attributions {attr.shape} must be (N, C_out) with one label per row, labels {labels.shape}")
    rows = []
    for c in range(attr.shape[1]):
        for j in range(num_classes):
            values = attr[labels == j, c]
            stats = dict.fromkeys(ATTRIBUTION_STATS, np.nan)
            stats.update(n=int(values.size), sum=float(values.sum()))
            if values.size:
                q = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
                stats.update(mean=float(values.mean()), min=float(values.min()), max=float(values.max()),
                             q05=q[0], q25=q[1], median=q[2], q75=q[3], q95=q[4])
            rows.append({"logit": c, "train_class": j, **stats})
    return pd.DataFrame(rows, columns=["logit", "train_class", *ATTRIBUTION_STATS])


def top_k_exemplars(kernel_rows: ArrayLike, k: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The ``k`` training points of highest kernel value for each row of ``kernel_rows`` (M, N).

    Returns ``(indices (M, k'), values (M, k'))``, ``k' = min(k, N)``, in decreasing kernel
    value; ties go to the lower training index (a stable sort), so the result is deterministic.
    """
    K = np.asarray(kernel_rows, dtype=np.float64)
    if K.ndim != 2 or K.shape[1] == 0:
        raise ValueError(f"kernel_rows must be (M, N) with N >= 1, got {K.shape}")
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    order = np.argsort(-K, axis=1, kind="stable")[:, : min(k, K.shape[1])]
    return order.astype(np.int64), np.take_along_axis(K, order, axis=1)


def realisation_pairs(kglm_logits: ArrayLike, nn_logits: ArrayLike, y: ArrayLike, seed: int
                      ) -> tuple[pd.DataFrame, dict[str, float]]:
    """The held-out pairs of :func:`ntkbench.metrics.linear_realisation` (``outputs="paper"``)
    with every fitted Φ evaluated on them.

    Returns ``(pairs, r2)``: ``pairs`` has one row per held-out (test point, output) pair,
    columns ``test_row``, ``output``, ``kglm_logit``, ``nn_logit``, ``nn_prob``, then per Φ
    ``phi_<Φ>`` (Φ(kGLM logit), NaN when that Φ did not converge) and ``r2_<Φ>``; ``r2`` maps
    each Φ to its R² (logit space, held-out half), the numbers the surrogate stage reports for
    the same ``seed``.
    """
    result = linear_realisation(kglm_logits, nn_logits, y, seed=seed, return_pairs=True)
    pairs = result["eval_pairs"]
    frame = pd.DataFrame({"test_row": pairs["point"], "output": pairs["output"], "kglm_logit": pairs["kglm_logit"],
                          "nn_logit": pairs["nn_logit"], "nn_prob": special.expit(pairs["nn_logit"])})
    r2 = {}
    for name in REALISATION_FUNCTIONS:
        params = result[f"params_{name}"]
        frame[f"phi_{name}"] = (realisation_phi(name, pairs["kglm_logit"], params) if params is not None
                                else np.full(pairs["kglm_logit"].shape, np.nan))
        r2[name] = float(result[f"r2_{name}"])
    for name in REALISATION_FUNCTIONS:
        frame[f"r2_{name}"] = r2[name]
    return frame, r2
