"""Training loop of the Toy Models of Superposition (SPEC §4.1): full batch Adam on a fixed set."""
from __future__ import annotations

import time

import pandas as pd
import torch
from torch import nn

from ntkbench.utils import get_logger

log = get_logger(__name__)

__all__ = ["importance_loss", "train_tms"]


def importance_loss(out: torch.Tensor, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Mean over batch and features of I_i (x'_i − x_i)²."""
    return (importance * (out - x) ** 2).mean()


def train_tms(model: nn.Module, x: torch.Tensor, importance: torch.Tensor, *, lr: float = 1e-3,
              steps: int = 5000, log_every: int = 500, device: torch.device | str = "cpu") -> pd.DataFrame:
    """Train ``model`` in place with full-batch Adam; returns the loss curve (step, loss).

    Deterministic given the model's initial weights and ``x`` (no sampling inside).
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"TMS training needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    model.to(device).train()
    x = x.to(device)
    imp = importance.to(device=device, dtype=x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rows = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = importance_loss(model(x), x, imp)
        loss.backward()
        opt.step()
        if step == 1 or step % log_every == 0 or step == steps:
            rows.append({"step": step, "loss": float(loss.detach())})
            log.info("TMS step %d/%d loss %.6g (%.1fs)", step, steps, float(loss.detach()), time.perf_counter() - start)
    model.eval()
    return pd.DataFrame(rows)
