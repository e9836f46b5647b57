"""Training loop of the modular-addition MLP (SPEC §4.2): full-batch AdamW on MSE, checkpoints."""
from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ntkbench.data.modadd import ModAddData
from ntkbench.utils import get_logger

log = get_logger(__name__)

__all__ = ["train_modadd"]


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    out = model(x)
    return float((out.argmax(1) == y).float().mean()), float(F.mse_loss(out, targets))


def train_modadd(model: nn.Module, data: ModAddData, *, lr: float = 0.05, weight_decay: float = 0.01,
                 epochs: int = 500, checkpoint_every: int = 10, device: torch.device | str = "cpu",
                 log_every: int = 10) -> tuple[pd.DataFrame, dict[int, dict[str, torch.Tensor]]]:
    """Train in place (full batch, one AdamW step per epoch, MSE on one-hot targets).

    Returns the per-epoch curve (epoch, train_acc, test_acc, train_loss, test_loss; epoch 0 is
    the initialisation, epoch e is after e optimiser steps) and the checkpoints
    {epoch: state_dict on CPU} at epochs 0, checkpoint_every, 2·checkpoint_every, ... and the
    final epoch.
    """
    if epochs < 1 or checkpoint_every < 1:
        raise ValueError(f"epochs and checkpoint_every must be >= 1, got {epochs}, {checkpoint_every}")
    model.to(device)
    x, y, t = data.x.to(device), data.y.to(device), data.targets.to(device)
    tr = torch.as_tensor(data.train_idx, device=device)
    te = torch.as_tensor(data.test_idx, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    rows: list[dict[str, Any]] = []
    checkpoints: dict[int, dict[str, torch.Tensor]] = {}

    def record(epoch: int) -> None:
        model.eval()
        train_acc, train_loss = _evaluate(model, x[tr], y[tr], t[tr])
        test_acc, test_loss = _evaluate(model, x[te], y[te], t[te])
        rows.append({"epoch": epoch, "train_acc": train_acc, "test_acc": test_acc,
                     "train_loss": train_loss, "test_loss": test_loss})
        if epoch % checkpoint_every == 0 or epoch == epochs:
            checkpoints[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if epoch % log_every == 0 or epoch == epochs:
            log.info("epoch %d: train acc %.3f loss %.3g, test acc %.3f loss %.3g",
                     epoch, train_acc, train_loss, test_acc, test_loss)

    start = time.perf_counter()
    record(0)
    for epoch in range(1, epochs + 1):
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x[tr]), t[tr])
        loss.backward()
        opt.step()
        record(epoch)
    log.info("trained %d epochs in %.1fs", epochs, time.perf_counter() - start)
    model.eval()
    return pd.DataFrame(rows), checkpoints
