"""Toy Models of Superposition data (SPEC §4.1): one fixed, seeded set of sparse feature vectors."""
from __future__ import annotations

import torch

__all__ = ["make_tms_data", "importance_weights"]


def make_tms_data(n_features: int = 50, sparsity: float = 0.9, num_points: int = 500,
                  seed: int = 0, normalise: bool = True) -> torch.Tensor:
    """A fixed TMS data set of shape (num_points, n_features), float32.

    Each feature is 0 with probability ``sparsity``, else drawn from U[0, 1]; with
    ``normalise`` every row is then divided by its L2 norm (+1e-8, so all-zero rows stay 0).
    The draw uses its own generator, so the data depend on ``seed`` only.
    """
    if n_features < 1 or num_points < 1:
        raise ValueError(f"TMS data needs n_features >= 1 and num_points >= 1, got {n_features}, {num_points}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"TMS sparsity must be in [0, 1), got {sparsity}")
    gen = torch.Generator().manual_seed(int(seed))
    values = torch.rand(num_points, n_features, generator=gen)
    keep = torch.rand(num_points, n_features, generator=gen) >= sparsity
    x = values * keep
    if normalise:
        x = x / (x.norm(dim=1, keepdim=True) + 1e-8)
    return x.float()


def importance_weights(n_features: int, importance: float = 0.8) -> torch.Tensor:
    """Feature importances I_i = importance**i, i = 0..n-1 (float64)."""
    if not 0.0 < importance <= 1.0:
        raise ValueError(f"TMS importance must be in (0, 1], got {importance}")
    return torch.tensor(float(importance), dtype=torch.float64) ** torch.arange(n_features, dtype=torch.float64)
