"""Generic per-sample Jacobians with ``torch.func`` (works for any functional model).

This is the reference path: ``vmap(jacrev(f))`` over samples, where ``f`` is one sample's
forward through ``functional_call``; ``jacrev`` shares one forward among the C outputs.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from .forward import (
    as_logits,
    checked_forward,
    eval_mode,
    model_device,
    parameter_groups,
    trainable_parameters,
)
from .inputs import as_input_tensor, cast_input, iter_batches

__all__ = ["jacobian", "parameter_groups", "per_sample_jacobians", "functional_state", "class_scale"]


def functional_state(
    model: nn.Module, device: torch.device, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Detached copies of the trainable parameters and the buffers on ``device``/``dtype``.

    Kernels are computed with these (through ``functional_call``), so the user's model is
    never moved or cast. Frozen parameters travel with the buffers: they shape the function
    but are not differentiated.
    """
    params = {
        n: p.detach().to(device=device, dtype=dtype) for n, p in trainable_parameters(model).items()
    }
    frozen: dict[str, torch.Tensor] = {}
    for n, p in model.named_parameters():
        if n not in params:
            frozen[n] = p.detach().to(device=device, dtype=dtype if p.is_floating_point() else p.dtype)
    for n, b in model.named_buffers():
        frozen[n] = b.to(device=device, dtype=dtype) if b.is_floating_point() else b.to(device=device)
    return params, frozen


def class_scale(importance: Any, num_classes: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """Per-class multipliers sqrt(importance[c]) applied to g^c (None when no importance).

    ``importance`` is the already-exponentiated weight vector I_c^beta, so g^c is scaled by
    I_c^(beta/2) and every kernel entry <g^c, g^c'> picks up sqrt(I_c^beta I_c'^beta).
    """
    if importance is None:
        return None
    imp = torch.as_tensor(importance, dtype=torch.float64).flatten()
    if imp.numel() != num_classes:
        raise ValueError(f"importance has {imp.numel()} entries but the model has C={num_classes} outputs")
    if not torch.isfinite(imp).all() or (imp < 0).any():
        raise ValueError("importance weights must be finite and non-negative")
    return imp.sqrt().to(device=device, dtype=dtype)


def per_sample_jacobians(
    model: nn.Module,
    xb: torch.Tensor,
    params: dict[str, torch.Tensor],
    others: dict[str, torch.Tensor],
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Jacobians of the (C,) logits of every sample in ``xb`` w.r.t. ``params[names]``.

    Returns ``{name: (B, C, *param.shape)}``. Parameters not in ``names`` are held fixed.
    The caller has put the model in eval mode (samples must be independent).
    """
    names = list(params) if names is None else list(names)
    wrt = {n: params[n] for n in names}
    fixed = {n: t for n, t in params.items() if n not in wrt}
    fixed.update(others)

    def one_sample(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**fixed, **p}, (xi.unsqueeze(0),))
        return as_logits(out, 1).squeeze(0)

    return vmap(jacrev(one_sample), in_dims=(None, 0))(wrt, xb)


def _validate_batch(model: nn.Module, xb: torch.Tensor, params: dict, others: dict) -> int:
    """A plain forward gives clear shape/finiteness errors (vmap's would be cryptic); returns C."""
    with torch.no_grad():
        logits = checked_forward(model, xb, lambda t: functional_call(model, {**others, **params}, (t,)))
    return logits.shape[1]


def jacobian(
    model: nn.Module,
    x: Any,
    *,
    importance: Any = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    layerwise: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Per-sample, per-class Jacobians g^c(x_n) = dF^c(x_n)/dtheta.

    Args:
        model: network whose output on a batch is (N, C) logits (a (N,) output means C = 1).
        x: inputs as a Tensor (N, ...), ndarray, Dataset or DataLoader (first tuple element).
        importance: optional length-C vector of already-exponentiated class weights I_c^beta;
            g^c is multiplied by sqrt(importance[c]) = I_c^(beta/2).
        batch_size: samples per vmap'd batch.
        device: where to compute; None means the model's device. The model is not moved.
        dtype: computation dtype (parameters, buffers and floating inputs are cast).
        layerwise: return ``{group: (N, C, P_group)}`` with groups from :func:`parameter_groups`.

    Returns:
        (N, C, P) tensor on ``device``; parameters in ``model.named_parameters()`` order
        (trainable ones only), each flattened row-major. The model is evaluated in eval mode
        and its modes are restored afterwards.
    """
    x = as_input_tensor(x, "x")
    dev = model_device(model) if device is None else torch.device(device)
    params, others = functional_state(model, dev, dtype)
    groups = parameter_groups(model)
    chunks: list[torch.Tensor] = []
    scale = None
    with eval_mode(model):
        for _, xb in iter_batches(x, batch_size):
            xb = cast_input(xb, dev, dtype)
            num_classes = _validate_batch(model, xb, params, others)
            if scale is None and importance is not None:
                scale = class_scale(importance, num_classes, dev, dtype)
            jac = per_sample_jacobians(model, xb, params, others)
            flat = torch.cat([jac[n].reshape(xb.shape[0], num_classes, -1) for n in params], dim=2)
            if scale is not None:
                flat = flat * scale.view(1, -1, 1)
            chunks.append(flat)
    full = torch.cat(chunks, dim=0)
    if not layerwise:
        return full
    sizes = {n: p.numel() for n, p in params.items()}
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for group, names in groups.items():
        width = sum(sizes[n] for n in names)
        out[group] = full[:, :, offset : offset + width]
        offset += width
    return out
