"""Label noise: flip a fraction of the training labels, deterministically.

Used by a config ``data: {label_noise: {fraction, seed}}`` block (:func:`ntkbench.data.load_dataset`)
and by the attribution benchmark's mislabel-detection twin of an experiment
(``ntkbench.stages.attribution``).

Flipping (:func:`flip_labels`) is deterministic given ``seed``: exactly
``round(fraction · N)`` points, chosen as the first entries of a permutation drawn from
``numpy.random.Generator(PCG64(SeedSequence([seed, 2**31])))``; a binary label becomes the
other class, a multi-class label a uniformly drawn *different* class (same generator). Test
labels are never touched.

Arrays saved with the bundle (``DataBundle.extra``): ``flipped`` (bool ``(N,)``, the
flipped training points) and ``clean_train_y`` (the labels before flipping).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from ntkbench.data import DataBundle, Split

__all__ = ["flip_labels", "label_noise_bundle", "mislabel_bundle"]


def flip_labels(y: ArrayLike, num_classes: int, fraction: float, seed: int = 0
                ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Labels with ``round(fraction · N)`` of them changed, and the flipped mask ``(N,)``."""
    labels = np.asarray(y).astype(np.int64).ravel()
    n = labels.size
    if num_classes < 2:
        raise ValueError(f"need at least two classes to flip labels, got {num_classes}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"flip fraction must lie in [0, 1], got {fraction!r}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 2**31])))
    k = int(round(float(fraction) * n))
    chosen = rng.permutation(n)[:k]
    new = labels.copy()
    if num_classes == 2:
        new[chosen] = 1 - labels[chosen]
    else:
        new[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=k)) % num_classes
    flipped = np.zeros(n, dtype=bool)
    flipped[chosen] = True
    return new, flipped


def label_noise_bundle(bundle: DataBundle, fraction: float, seed: int = 0) -> DataBundle:
    """The bundle with flipped training labels (test labels untouched); ``extra["flipped"]``
    holds the mask, ``extra["clean_train_y"]`` the original labels, ``meta["label_noise"]``
    the settings."""
    if "flipped" in bundle.extra:
        raise ValueError("data.label_noise: this bundle's labels are already flipped")
    new, flipped = flip_labels(bundle.train.y.numpy(), bundle.num_classes, fraction, seed)
    return replace(bundle, train=Split(bundle.train.x, torch.from_numpy(new)),
                   extra={**bundle.extra, "flipped": flipped, "clean_train_y": bundle.train.y.numpy().copy()},
                   meta={**bundle.meta, "label_noise": {"fraction": float(fraction), "seed": int(seed),
                                                        "num_flipped": int(flipped.sum())}})


# The attribution library's name for the same thing.
mislabel_bundle = label_noise_bundle
