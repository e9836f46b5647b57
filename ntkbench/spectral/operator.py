"""Matrix-free flattened eNTK: v ↦ J (Jᵀ v) through one VJP and one JVP, J never formed.

For the modular-addition MLP the flattened eNTK has (p²·p)² entries and its Jacobian p³·P
(≈ 4 GB at p = 29, width 512), so neither fits comfortably; a product costs one backward and one
forward-mode pass over the data set instead.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, linearize, vjp

from ntkbench.kernels.forward import eval_mode, trainable_parameters

__all__ = ["entk_operator"]


def entk_operator(model: nn.Module, x: torch.Tensor, *, importance: Any = None,
                  dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                  ) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """``(matvec, dim)`` of the class-major flattened eNTK K[(c·N + n), (c'·N + m)] on ``x``.

    ``importance`` (length C, already exponentiated, as in :func:`ntkbench.kernels.jacobian`)
    scales g^c by sqrt(importance[c]). Parameters are the trainable ones, in eval mode; the
    model itself is not modified.
    """
    dev = next(model.parameters()).device if device is None else torch.device(device)
    params = {n: p.detach().to(device=dev, dtype=dtype) for n, p in trainable_parameters(model).items()}
    others = {n: b.to(device=dev, dtype=dtype) if b.is_floating_point() else b.to(dev)
              for n, b in model.named_buffers()}
    others.update({n: p.detach().to(device=dev, dtype=dtype) for n, p in model.named_parameters()
                   if n not in params})
    xd = x.to(device=dev, dtype=dtype)

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        with eval_mode(model):
            return functional_call(model, {**others, **p}, (xd,))

    out, vjp_fn = vjp(f, params)
    _, jvp_fn = linearize(f, params)
    n, c = out.shape
    scale = None
    if importance is not None:
        imp = torch.as_tensor(importance, dtype=dtype, device=dev).flatten()
        if imp.numel() != c:
            raise ValueError(f"importance has {imp.numel()} entries but the model has C={c} outputs")
        scale = imp.sqrt().view(1, c)

    def matvec(v: np.ndarray) -> np.ndarray:
        cot = torch.as_tensor(np.ascontiguousarray(v), dtype=dtype, device=dev).view(c, n).T
        if scale is not None:
            cot = cot * scale
        (grads,) = vjp_fn(cot.contiguous())
        res = jvp_fn(grads)
        if scale is not None:
            res = res * scale
        return res.T.reshape(-1).cpu().numpy()

    return matvec, n * c
