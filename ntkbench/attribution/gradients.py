"""Per-sample gradients of the loss or of the true-class margin, and their seeded projection.

All parameters of the model (those with ``requires_grad``) are differentiated and flattened
in ``model.named_parameters()`` order, so a row has ``P = Σ numel`` entries. Gradients are
computed with ``torch.func.vmap(torch.func.grad(...))`` over batches of ``batch_size``
samples, with the model in eval mode (batch norm uses its running statistics, dropout is
off): the gradient of the training objective of one sample at the given weights.

Output functions of one sample ``(x, y)`` with logits ``z`` (C = 1 binary or C ≥ 2):

- ``"loss"``: the training loss of the sample, ``ntkbench.training.classifier.classification_loss``
  with the experiment's ``train.loss`` (argument ``loss``): ``"cross_entropy"`` (binary
  cross-entropy on the one logit for C = 1, cross-entropy for C ≥ 2) or ``"mse_sigmoid"``
  (``(σ(z) − y)²``, one logit);
- ``"margin"``: TRAK's model output ``log(p_y / (1 − p_y))``, i.e. ``±z`` for C = 1 and
  ``z_y − logsumexp_{c≠y} z_c`` for C ≥ 2 (``ntkbench.metrics.true_class_logit``).

The model's state, its eval mode and the projection are the kernel engine's
(:mod:`ntkbench.kernels`: ``functional_state``, ``eval_mode``, ``as_logits``, ``project_rows``):
R (K × P) is generated in seeded tiles keyed by parameter name, never materialised whole,
device-independent, scaled by 1/sqrt(K) — the same R the ``proj-*`` kernels use for the same
seed.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ntkbench.config import schema_default
from ntkbench.kernels import as_logits, eval_mode, functional_state, project_rows
from ntkbench.training.classifier import classification_loss

__all__ = [
    "OUTPUTS",
    "BATCH_SIZE",
    "parameter_layout",
    "iter_per_sample_grads",
    "per_sample_grads",
    "output_values",
    "project",
    "projected_grads",
]

OUTPUTS = ("loss", "margin")
#: Per-sample gradients per batch: the config schema's ``attribution.batch_size`` default.
BATCH_SIZE: int = schema_default("attribution", "batch_size")


def parameter_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every trainable parameter, in flattening order."""
    return [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]


def _sample_output(z: torch.Tensor, y: torch.Tensor, output: str, loss: str = "cross_entropy") -> torch.Tensor:
    """Scalar output of one sample from its logits ``z`` (C,) and label ``y`` ()."""
    if output == "loss":
        return classification_loss(z.unsqueeze(0), y.unsqueeze(0), loss)
    if output == "margin":
        if z.shape[0] == 1:
            return torch.where(y == 1, z[0], -z[0])
        zy = z.gather(0, y.unsqueeze(0))[0]
        others = z.masked_fill(torch.arange(z.shape[0], device=z.device) == y, float("-inf"))
        return zy - torch.logsumexp(others, 0)
    raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


def iter_per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: str = "loss",
                          state_dict: Mapping[str, torch.Tensor] | None = None, batch_size: int = BATCH_SIZE,
                          device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                          loss: str = "cross_entropy") -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, G)`` with ``G`` the flattened per-sample gradients (B, P) of samples
    ``start .. start + B - 1`` (on ``device``, ``dtype``), B ≤ ``batch_size``; ``loss`` is the
    training loss name used by ``output="loss"``."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    params, others = functional_state(model, device, dtype, state_dict)

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        z = as_logits(functional_call(model, (p, others), (xi.unsqueeze(0),)), 1)[0]
        return _sample_output(z, yi, output, loss)

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device=device, dtype=dtype)
            yb = y[start:start + batch_size].to(device)
            g = per_sample(params, xb, yb)
            yield start, torch.cat([g[n].reshape(len(xb), -1) for n in params], dim=1)


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: str = "loss",
                     state_dict: Mapping[str, torch.Tensor] | None = None, batch_size: int = BATCH_SIZE,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                     loss: str = "cross_entropy") -> torch.Tensor:
    """All per-sample gradients, ``(n, P)`` — n·P values in memory (see :func:`iter_per_sample_grads`)."""
    return torch.cat([g for _, g in iter_per_sample_grads(model, x, y, output, state_dict, batch_size,
                                                           device, dtype, loss)])


@torch.no_grad()
def output_values(model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: str = "margin",
                  state_dict: Mapping[str, torch.Tensor] | None = None, batch_size: int = 1024,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The scalar ``output`` of every sample, ``(n,)`` float64 (eval mode)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    params, others = functional_state(model, device, torch.float32, state_dict)
    outs = []
    with eval_mode(model):
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size].to(device)
            z = as_logits(functional_call(model, (params, others), (xb,)), len(xb)).double()
            yb = y[s:s + batch_size].to(device)
            outs.append(vmap(lambda zi, yi: _sample_output(zi, yi, output))(z, yb))
    return torch.cat(outs).cpu() if outs else torch.zeros(0, dtype=torch.float64)


def project(G: torch.Tensor, layout: list[tuple[str, tuple[int, ...]]], proj_dim: int, seed: int,
            proj_type: str = "gaussian") -> torch.Tensor:
    """``G Rᵀ``: per-sample gradients (n, P) projected to (n, K), K = ``proj_dim``, with the
    kernel engine's seeded projection (:func:`ntkbench.kernels.project_rows`: R entries
    N(0,1) or ±1, times 1/sqrt(K))."""
    return project_rows(G, layout, proj_dim, seed, proj_type)


def projected_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, proj_dim: int, seed: int,
                    output: str = "margin", proj_type: str = "gaussian",
                    state_dict: Mapping[str, torch.Tensor] | None = None, batch_size: int = BATCH_SIZE,
                    chunk: int = 2048, device: torch.device | str | None = None,
                    loss: str = "cross_entropy") -> torch.Tensor:
    """Projected per-sample gradients Φ, ``(n, proj_dim)``, float32.

    Gradients are projected ``chunk`` samples at a time (each call regenerates R's tiles, so
    large chunks amortise that), keeping at most ``chunk · P`` gradient values in memory.
    ``loss`` is the training loss name used by ``output="loss"``.
    """
    layout = parameter_layout(model)
    feats, pending, count = [], [], 0
    for _, g in iter_per_sample_grads(model, x, y, output, state_dict, batch_size, device, loss=loss):
        pending.append(g)
        count += len(g)
        if count >= chunk:
            feats.append(project(torch.cat(pending), layout, proj_dim, seed, proj_type))
            pending, count = [], 0
    if pending:
        feats.append(project(torch.cat(pending), layout, proj_dim, seed, proj_type))
    return torch.cat(feats) if feats else torch.zeros(0, int(proj_dim))
