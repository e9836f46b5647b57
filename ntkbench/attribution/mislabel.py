"""Mislabel detection: flip a fraction of training labels, rank points by self-influence.

Flipping (:func:`flip_labels`, :func:`mislabel_bundle`) lives in
:mod:`ntkbench.data.label_noise` (deterministic given its seed) and is re-exported here.

Detection is scored by the ROC AUC of the self-influence scores against the flipped mask
(:func:`detection_auc`): the probability that a flipped point scores higher than a clean one,
ties counting one half (Mann–Whitney U / (n_flipped · n_clean)); 0.5 is chance, 1 perfect.
The detection curve of the mislabel literature (fraction of flipped points found after
checking the top-scored fraction of the data, :func:`detection_curve`) has area
``q/2 + (1 − q) · AUC`` for a flipped fraction ``q`` without ties, so both rank methods alike;
the ROC AUC does not depend on q.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

# Label flipping belongs to the data layer (a config's ``data.label_noise``); re-exported here.
from ntkbench.data.label_noise import flip_labels, mislabel_bundle

__all__ = ["flip_labels", "mislabel_bundle", "detection_auc", "detection_curve", "detection_curve_area",
           "auc_rows"]


def _check(scores: ArrayLike, flipped: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    f = np.asarray(flipped).astype(bool).ravel()
    if s.shape != f.shape:
        raise ValueError(f"scores {s.shape} and flipped mask {f.shape} differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("self-influence scores contain NaN or infinite values")
    return s, f


def detection_auc(scores: ArrayLike, flipped: ArrayLike) -> float:
    """ROC AUC of ``scores`` (higher = more suspicious) for the ``flipped`` mask; NaN when
    either class is empty."""
    s, f = _check(scores, flipped)
    n_pos, n_neg = int(f.sum()), int((~f).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(s)  # average ranks: a tie counts 1/2
    u = ranks[f].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def detection_curve(scores: ArrayLike, flipped: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(fraction of data checked, fraction of flipped points found), both ``(N + 1,)`` from 0,
    checking points in order of decreasing score (ties in index order)."""
    s, f = _check(scores, flipped)
    order = np.argsort(-s, kind="stable")
    found = np.concatenate([[0.0], np.cumsum(f[order])]) / max(int(f.sum()), 1)
    checked = np.arange(s.size + 1) / max(s.size, 1)
    return checked, found


def detection_curve_area(scores: ArrayLike, flipped: ArrayLike) -> float:
    """Trapezoidal area under :func:`detection_curve`."""
    x, y = detection_curve(scores, flipped)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def auc_rows(self_influence: Mapping[str, ArrayLike], flipped: ArrayLike) -> list[dict]:
    """One dict per method: ``{"method", "auc", "detection_area", "n_flipped"}``."""
    f = np.asarray(flipped).astype(bool)
    return [{"method": name, "auc": detection_auc(s, f), "detection_area": detection_curve_area(s, f),
             "n_flipped": int(f.sum())} for name, s in self_influence.items()]
