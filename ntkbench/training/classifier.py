"""Supervised training of the classifier zoo, seeded and device-agnostic."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ntkbench.data import DataBundle, Split
from ntkbench.utils import get_logger, seed_everything

log = get_logger(__name__)

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
#: Training losses (config ``train.loss``): ``cross_entropy`` is binary cross-entropy on one
#: logit and softmax cross-entropy on several; ``mse_sigmoid`` is the reference code's MNIST2
#: loss, the mean squared error between σ(F(x)) and the 0/1 label (one output logit only).
LOSSES = ("cross_entropy", "mse_sigmoid")


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (config block ``train:``)."""

    optimizer: str = "sgd"
    lr: float = 1e-3
    epochs: int = 100
    batch_size: int = 64
    momentum: float = 0.0
    weight_decay: float = 0.0
    loss: str = "cross_entropy"  # the schema's default too (ntkbench/resources/config.schema.yaml, train.loss)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer: unknown {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss: unknown {self.loss!r}; choose one of {list(LOSSES)}")
        for name in ("lr", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """Mean training loss of a batch of logits (N, C) against integer labels (N,).

    ``"cross_entropy"``: binary cross-entropy on one logit, cross-entropy on several.
    ``"mse_sigmoid"``: ``mean((σ(z) − y)²)`` on one logit (the reference MNIST2 recipe).
    """
    if loss == "mse_sigmoid":
        if logits.shape[1] != 1:
            raise ValueError(f"train.loss 'mse_sigmoid' needs one output logit (binary task), "
                             f"got {logits.shape[1]} outputs")
        return F.mse_loss(torch.sigmoid(logits[:, 0]), y.to(logits.dtype))
    if loss != "cross_entropy":
        raise ValueError(f"train.loss: unknown {loss!r}; choose one of {list(LOSSES)}")
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


@torch.no_grad()
def evaluate_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``x``, returned on CPU as float32 (N, C)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size].to(device)).float().cpu()
                     for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def _accuracy(model: nn.Module, split: Split, device: torch.device, loss_name: str) -> tuple[float, float]:
    logits = evaluate_logits(model, split.x, device=device)
    loss = classification_loss(logits, split.y, loss_name).item()
    return float((predicted_labels(logits) == split.y).float().mean()), loss


def train_classifier(model: nn.Module, data: DataBundle, cfg: TrainConfig, seed: int,
                     device: torch.device | str = "cpu", log_every: int = 10) -> pd.DataFrame:
    """Train in place; return the per-epoch history (epoch, train/test accuracy and loss).

    Mini-batch order comes from a generator seeded by ``seed``, so a run is reproducible.
    A diverged run (non-finite loss) is returned, not raised: judging it is the caller's job
    (:func:`ntkbench.training.health.check_training`), so that ``allow_divergence`` can keep it.
    """
    device = torch.device(device)
    gen = seed_everything(seed)
    model.to(device).train()
    opt_cls = OPTIMIZERS[cfg.optimizer]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        kwargs["momentum"] = cfg.momentum
    optimizer = opt_cls(model.parameters(), **kwargs)
    x, y = data.train.x, data.train.y
    n = len(x)
    history = []
    start = time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                continue  # batch-norm cannot train on a single sample
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = classification_loss(model(xb), yb, cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if epoch % log_every == 0 or epoch == cfg.epochs or epoch == 1:
            train_acc, train_loss = _accuracy(model, data.train, device, cfg.loss)
            test_acc, test_loss = _accuracy(model, data.test, device, cfg.loss)
            history.append({"epoch": epoch, "train_acc": train_acc, "test_acc": test_acc,
                            "train_loss": train_loss, "test_loss": test_loss})
            log.info("epoch %d/%d  train acc %.4f loss %.4f  test acc %.4f  (%.1fs)",
                     epoch, cfg.epochs, train_acc, train_loss, test_acc, time.time() - start)
    model.eval()
    return pd.DataFrame(history)
