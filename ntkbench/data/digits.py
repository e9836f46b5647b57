"""scikit-learn's bundled 8×8 digits: the embedded default, no download needed."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ntkbench.data import DataBundle, Split
from ntkbench.utils import get_logger

_LOG = get_logger(__name__)


def load_digits_bundle(
    classes: Sequence[int] | None = None,
    test_fraction: float = 0.3,
    split_seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
    data_dir: Path | None = None,  # unused: the data ship with scikit-learn
) -> DataBundle:
    """Digits restricted to ``classes`` (all ten when None), pixels scaled to [0, 1].

    Labels are re-indexed to 0..len(classes)-1 in the order given, so classes [0, 1] are a
    binary task. The split is stratified and fixed by ``split_seed`` (independent of the
    training seed, so every seed sees the same train/test sets, as in the paper).
    """
    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    y = digits.target.astype(np.int64)
    classes = list(range(10)) if classes is None else [int(c) for c in classes]
    if len(set(classes)) != len(classes) or not set(classes) <= set(range(10)) or len(classes) < 2:
        raise ValueError(f"data.classes: need at least two distinct digits in 0..9, got {classes}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    keep = np.isin(y, classes)
    x, y = x[keep], y[keep]
    remap = {c: i for i, c in enumerate(classes)}
    y = np.array([remap[int(v)] for v in y], dtype=np.int64)
    x = x[:, None, :, :]  # (N, 1, 8, 8): channels first for CNNs; MLPs flatten
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    # Optional stratified subsets (tiny test configs); seeded by split_seed like the split.
    train_idx = _stratified_subset(train_idx, y, max_train, split_seed, "max_train")
    test_idx = _stratified_subset(test_idx, y, max_test, split_seed, "max_test")
    return DataBundle(
        train=Split(x[train_idx], y[train_idx]),
        test=Split(x[test_idx], y[test_idx]),
        num_classes=len(classes),
        meta={"name": "digits", "classes": classes, "test_fraction": test_fraction,
              "split_seed": split_seed, "max_train": max_train, "max_test": max_test,
              "n_train": len(train_idx), "n_test": len(test_idx)},
    )


def _stratified_subset(idx: np.ndarray, y: np.ndarray, size: int | None, seed: int, key: str) -> np.ndarray:
    """Sorted indices of at most ``size`` elements of ``idx``, keeping the class balance.

    A ``size`` beyond the split keeps all of it with a warning rather than an error: the data
    set is small and its split sizes follow test_fraction, so "max_train: 10000" meaning "all"
    is a natural way to write it; the count kept is in the bundle's meta (n_train, n_test)."""
    if size is not None and size > len(idx):
        _LOG.warning("data.%s: asked for %d digits images but the split has only %d; using all %d",
                     key, size, len(idx), len(idx))
    if size is None or size >= len(idx):
        return np.sort(idx)
    if size < len(np.unique(y[idx])):
        raise ValueError(f"data.{key} = {size} is smaller than the number of classes")
    keep, _ = train_test_split(idx, train_size=size, random_state=seed, stratify=y[idx])
    return np.sort(keep)
