"""Toy Models of Superposition (SPEC §4.1): x' = ReLU(Wᵀ W x + b) with tied weights."""
from __future__ import annotations

import torch
from torch import nn

from ntkbench.models import register

__all__ = ["TMSModel", "tms"]


class TMSModel(nn.Module):
    """ReLU output model with tied weights W ∈ R^{m×n} (xavier-normal) and bias b = 0 at init.

    W is tied between encoder and decoder, so it is a plain parameter (no nn.Linear): the
    kernel engine's generic path handles it. Parameters in order: ``W`` (m·n), ``b`` (n).
    """

    def __init__(self, n_features: int = 50, n_hidden: int = 10) -> None:
        super().__init__()
        if n_features < 1 or n_hidden < 1:
            raise ValueError(f"TMS model needs n_features, n_hidden >= 1, got {n_features}, {n_hidden}")
        self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_hidden, n_features)))
        self.b = nn.Parameter(torch.zeros(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x @ self.W.T) @ self.W + self.b)

    @torch.no_grad()
    def feature_norms(self) -> torch.Tensor:
        """Diagonal of WᵀW: how strongly each feature is represented (1 = fully)."""
        return (self.W * self.W).sum(0)


@register("tms")
def tms(n_features: int = 50, n_hidden: int = 10) -> TMSModel:
    return TMSModel(n_features=n_features, n_hidden=n_hidden)
