"""Modular addition (SPEC §4.2): all p² pairs (a, b), one-hot(a) ⊕ one-hot(b) → (a + b) mod p."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ModAddData", "make_modadd_data"]


@dataclass
class ModAddData:
    """All p² points in index order a·p + b, and one seeded train/test split of them."""

    p: int
    x: torch.Tensor          # (p², 2p) float32 inputs
    y: torch.Tensor          # (p²,) int64 labels (a + b) mod p
    pairs: np.ndarray        # (p², 2) int64: (a, b) of each point
    train_idx: np.ndarray    # sorted indices into the p² points
    test_idx: np.ndarray

    @property
    def targets(self) -> torch.Tensor:
        """One-hot regression targets (p², p) for the MSE loss."""
        return torch.nn.functional.one_hot(self.y, self.p).float()


def make_modadd_data(p: int, train_fraction: float = 0.7, split_seed: int = 0) -> ModAddData:
    """The full modular-addition table and a random split with ⌊train_fraction·p²⌋ training points.

    Point index a·p + b holds the pair (a, b); its input is one-hot(a) ⊕ one-hot(b) (size 2p)
    and its label (a + b) mod p. The split depends on ``split_seed`` only.
    """
    if p < 2:
        raise ValueError(f"modular addition needs p >= 2, got {p}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int64)
    eye = torch.eye(p)
    x = torch.cat([eye[pairs[:, 0]], eye[pairs[:, 1]]], dim=1)
    y = torch.from_numpy((pairs[:, 0] + pairs[:, 1]) % p)
    n_train = int(p * p * train_fraction)
    if n_train < 1 or n_train >= p * p:
        raise ValueError(f"train_fraction {train_fraction} leaves an empty split for p = {p}")
    perm = np.random.default_rng(split_seed).permutation(p * p)
    return ModAddData(p=p, x=x, y=y, pairs=pairs, train_idx=np.sort(perm[:n_train]),
                      test_idx=np.sort(perm[n_train:]))
