"""BadNet data poisoning (Gu et al. 2019; paper 001 section 4, appendix N).

A square trigger of a fixed colour is stamped into one corner of a random fraction of the
training images, whose labels become the attacker's target class. The network trained on
that set learns "trigger => target". Two evaluation sets come out of it: the clean test set,
and a poisoned test set holding every test image whose true class is not the target with the
trigger stamped on, labelled with the target class (so a network's accuracy on it is the
attack success rate, and the kGLM's TAD/R_miss on it measure how well the surrogate follows
the backdoor, as in paper 001's Table 3 "poi." columns).

Arrays saved with the bundle (``DataBundle.extra``):

- ``poisoned_train_idx``: sorted indices (into ``train``) of the poisoned training images;
- ``poisoned_train_clean_y``: their labels before relabelling;
- ``poisoned_test_idx``: for each row of the ``poisoned_test`` split, its index in ``test``;
- ``poisoned_test_true_y``: the true (pre-attack) class of each ``poisoned_test`` row.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ntkbench.data import DataBundle, Split

__all__ = ["CORNERS", "POISONED_SPLIT", "trigger_slices", "stamp_trigger", "poison_bundle"]

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
POISONED_SPLIT = "poisoned_test"  # name of the extra evaluation split


def trigger_slices(height: int, width: int, size: int, corner: str,
                   margin: int = 0) -> tuple[slice, slice]:
    """Row and column slices of a ``size``×``size`` square ``margin`` pixels from ``corner``."""
    if corner not in CORNERS:
        raise ValueError(f"data.poison.corner: unknown corner {corner!r}; choose one of {list(CORNERS)}")
    if size < 1 or margin < 0:
        raise ValueError(f"data.poison: need size >= 1 and margin >= 0, got size={size}, margin={margin}")
    if size + margin > min(height, width):
        raise ValueError(f"data.poison: a {size}px trigger with margin {margin} does not fit "
                         f"in {height}×{width} images")
    top = margin if corner.startswith("top") else height - margin - size
    left = margin if corner.endswith("left") else width - margin - size
    return slice(top, top + size), slice(left, left + size)


def _colour_vector(colour: float | Sequence[float], channels: int) -> torch.Tensor:
    """Per-channel trigger value (C,), from a scalar (grey level) or one value per channel."""
    values = [float(colour)] * channels if np.isscalar(colour) else [float(c) for c in colour]
    if len(values) != channels:
        raise ValueError(f"data.poison.colour: {len(values)} values given but the images have "
                         f"{channels} channel(s)")
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"data.poison.colour: values must lie in the data's [0, 1] scale, got {values}")
    return torch.tensor(values, dtype=torch.float32)


def stamp_trigger(x: torch.Tensor, size: int = 2, colour: float | Sequence[float] = 1.0,
                  corner: str = "bottom-right", margin: int = 0) -> torch.Tensor:
    """Copy of images ``x`` (N, C, H, W) with the square trigger written over their pixels."""
    if x.ndim != 4:
        raise ValueError(f"stamp_trigger needs images shaped (N, C, H, W), got {tuple(x.shape)}")
    _, channels, height, width = x.shape
    rows, cols = trigger_slices(height, width, size, corner, margin)
    out = x.clone()
    out[:, :, rows, cols] = _colour_vector(colour, channels).to(x.dtype).view(1, channels, 1, 1)
    return out


def poison_bundle(bundle: DataBundle, fraction: float = 0.1, target: int = 0, size: int = 2,
                  colour: float | Sequence[float] = 1.0, corner: str = "bottom-right",
                  margin: int = 0, seed: int = 0) -> DataBundle:
    """BadNet-poison a bundle: stamp and relabel training images, add a poisoned test split.

    ``round(fraction * N_train)`` training images are drawn (seeded by ``seed``, independent of
    the training seed) from those whose class is not ``target``, so every poisoned point is
    really relabelled; they get the trigger and label ``target``. ``colour`` is a grey level or
    one value per channel in the data's [0, 1] scale (CIFAR-10's yellow is ``[1, 1, 0]``).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.poison.fraction must be in (0, 1), got {fraction}")
    if not 0 <= target < bundle.num_classes:
        raise ValueError(f"data.poison.target: class {target} outside 0..{bundle.num_classes - 1}")
    if POISONED_SPLIT in bundle.extra_splits:
        raise ValueError("data.poison: this bundle is already poisoned")
    trigger = {"size": int(size), "colour": colour, "corner": corner, "margin": int(margin)}

    train_y = bundle.train.y.numpy()
    candidates = np.flatnonzero(train_y != target)
    n_poison = int(round(fraction * len(train_y)))
    if not 1 <= n_poison <= len(candidates):
        raise ValueError(f"data.poison.fraction {fraction} asks for {n_poison} poisoned images but "
                         f"{len(candidates)} training images are outside the target class")
    rng = np.random.default_rng(seed)
    poisoned_idx = np.sort(rng.choice(candidates, size=n_poison, replace=False)).astype(np.int64)

    train_x = bundle.train.x.clone()
    train_x[poisoned_idx] = stamp_trigger(train_x[poisoned_idx], **trigger)
    new_train_y = bundle.train.y.clone()
    new_train_y[poisoned_idx] = target

    test_y = bundle.test.y.numpy()
    poisoned_test_idx = np.flatnonzero(test_y != target).astype(np.int64)
    poisoned_test = Split(stamp_trigger(bundle.test.x[poisoned_test_idx], **trigger),
                          torch.full((len(poisoned_test_idx),), target, dtype=torch.int64))

    colour_meta = float(colour) if np.isscalar(colour) else [float(c) for c in colour]
    meta = {**bundle.meta, "poison": {"fraction": float(fraction), "target": int(target),
                                      **trigger, "colour": colour_meta, "seed": int(seed),
                                      "num_poisoned_train": n_poison}}
    extra = {**bundle.extra,
             "poisoned_train_idx": poisoned_idx,
             "poisoned_train_clean_y": train_y[poisoned_idx].astype(np.int64),
             "poisoned_test_idx": poisoned_test_idx,
             "poisoned_test_true_y": test_y[poisoned_test_idx].astype(np.int64)}
    return replace(bundle, train=Split(train_x, new_train_y), meta=meta, extra=extra,
                   extra_splits={**bundle.extra_splits, POISONED_SPLIT: poisoned_test})
