"""Influence functions (Koh & Liang 2017) with the explicit, damped Gauss–Newton matrix.

For a network with weights θ* trained on N points with the cross-entropy ℓ, the influence
of training point i on test point x is

    τ(x, i) = g(x)ᵀ (H + λ I)⁻¹ g(x_i),        g(·) = ∇_θ ℓ(·; θ*),

with H the mean generalised Gauss–Newton matrix (GGN) of the training loss,

    H = (1/N) Σ_i J_iᵀ A_i J_i,    J_i = ∂z(x_i)/∂θ (C × P),
    A_i = diag(p_i) − p_i p_iᵀ (softmax, C ≥ 2) or p_i (1 − p_i) (one binary logit),

and λ ≥ 0 the damping. τ > 0 means upweighting point i lowers the test loss (it supports
x), the sign convention of :mod:`ntkbench.attribution.methods`; τ is the negated
"influence on the test loss" of Koh & Liang.

The GGN is positive semi-definite and, for a model whose logits are linear in θ (logistic
regression), equal to the Hessian: there this *is* the exact influence function that
dattri's CG and explicit-Hessian attributors approximate. For deeper networks the GGN drops
the second-derivative term of the network (as K-FAC, EK-FAC and kronfluence do).

The matrix is built and solved explicitly (Cholesky, float64): ``P² · 8`` bytes and
``O(P³)`` time, so :data:`MAX_PARAMS` bounds P (logistic regression on MNIST: P = 7850,
0.5 GB and seconds). The per-sample Jacobians come from ``torch.func`` (eval mode: dropout
off, batch norm on its running statistics) in batches of ``batch_size``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import scipy.linalg
import torch
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntkbench.attribution.gradients import BATCH_SIZE, per_sample_grads
from ntkbench.config import schema_default
from ntkbench.kernels import as_logits, eval_mode, functional_state

__all__ = ["MAX_PARAMS", "gauss_newton", "influence_scores", "parameter_count"]

#: Largest P for which the explicit GGN is built: the config schema's
#: ``attribution.influence.max_params`` default (the one place it is written).
MAX_PARAMS: int = schema_default("attribution", "influence", "max_params")


def parameter_count(model: nn.Module) -> int:
    """P: the number of trainable parameters, the side of the GGN."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_size(model: nn.Module, max_params: int) -> int:
    n_params = parameter_count(model)
    if n_params > max_params:
        raise ValueError(f"the explicit Gauss-Newton matrix of {n_params} parameters needs "
                         f"{n_params ** 2 * 8 / 2 ** 30:.1f} GiB; max_params is {max_params}")
    return n_params


def gauss_newton(model: nn.Module, x: torch.Tensor, batch_size: int = BATCH_SIZE,
                 device: torch.device | str | None = None, max_params: int = MAX_PARAMS) -> NDArray[np.float64]:
    """The mean GGN ``H`` (P, P), float64, of the cross-entropy over inputs ``x`` (N, ...)
    at the model's weights (see the module docstring). Labels are not needed: ``A_i``
    depends on the predicted probabilities only."""
    n_params = _check_size(model, max_params)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    params, others = functional_state(model, device, torch.float64)

    def logits(p: Mapping[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return as_logits(functional_call(model, (p, others), (xi.unsqueeze(0),)), 1)[0]

    jacobian = vmap(jacrev(logits), in_dims=(None, 0))
    H = torch.zeros(n_params, n_params, dtype=torch.float64, device=device)
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device=device, dtype=torch.float64)
            with torch.enable_grad():
                jac = jacobian(params, xb)
            J = torch.cat([jac[n].reshape(len(xb), -1, jac[n][0, 0].numel()) for n in params], dim=2)  # (B, C, P)
            z = vmap(logits, in_dims=(None, 0))(params, xb)  # (B, C)
            if z.shape[1] == 1:  # binary: A = p(1 - p) on the one logit
                p = torch.sigmoid(z)
                M = torch.sqrt(p * (1 - p)).unsqueeze(2) * J
            else:  # A = diag(p) - p pᵀ = B Bᵀ with B = (I - p 1ᵀ) diag(√p): rows √p_d (J_d - Σ_c p_c J_c)
                p = torch.softmax(z, dim=1)
                M = torch.sqrt(p).unsqueeze(2) * (J - torch.einsum("bc,bcp->bp", p, J).unsqueeze(1))
            M = M.reshape(-1, n_params)
            H.addmm_(M.T, M)
    return (H / len(x)).cpu().numpy()


def influence_scores(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, x_train: torch.Tensor,
                     y_train: torch.Tensor, damping: float | Sequence[float], batch_size: int = BATCH_SIZE,
                     device: torch.device | str | None = None, max_params: int = MAX_PARAMS
                     ) -> NDArray[np.float64] | dict[float, NDArray[np.float64]]:
    """τ(x, i) (n_test, n_train), float64, for one damping λ ≥ 0; for a sequence of dampings,
    ``{λ: τ}`` from one GGN and one set of gradients. The GGN is that of the training inputs
    ``x_train``; gradients are of the cross-entropy with labels ``y_test`` / ``y_train``.
    λ = 0 needs a positive-definite GGN (a ValueError otherwise)."""
    lambdas = [float(damping)] if np.isscalar(damping) else [float(d) for d in damping]
    if not lambdas or min(lambdas) < 0:
        raise ValueError(f"damping must be ≥ 0, got {damping!r}")
    H = gauss_newton(model, x_train, batch_size, device, max_params)
    g_test = per_sample_grads(model, x_test, y_test, "loss", batch_size=batch_size, device=device,
                              dtype=torch.float64).cpu().numpy()
    g_train = per_sample_grads(model, x_train, y_train, "loss", batch_size=batch_size, device=device,
                               dtype=torch.float64).cpu().numpy()
    out: dict[float, NDArray[np.float64]] = {}
    for lam in lambdas:
        try:
            factor = scipy.linalg.cho_factor(H + lam * np.eye(len(H)), lower=True, check_finite=True)
        except np.linalg.LinAlgError as err:
            raise ValueError(f"H + {lam:g} I is not positive definite ({err}); use a larger damping") from err
        out[lam] = scipy.linalg.cho_solve(factor, g_test.T).T @ g_train.T
    return out[lambdas[0]] if np.isscalar(damping) else out
