"""TMS eNTK analysis (SPEC §4.1): flattened, importance-rescaled eNTK through the Jacobian Gram."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ntkbench import kernels
from ntkbench.data.tms import importance_weights
from ntkbench.spectral.eigen import TopEig, flatten_jacobian, topk_class_weighted, topk_from_jacobian
from ntkbench.spectral.features import alignment_heatmap, alignment_scores, tms_feature_vectors

__all__ = ["TMSSpectrum", "tms_spectrum", "tms_spectra", "n_represented"]


@dataclass
class TMSSpectrum:
    """Top eigenpairs of one (model, β) flattened eNTK and its alignment with the features."""

    beta: float
    eig: TopEig
    heatmap: np.ndarray          # (n_features, k): |⟨ẑ^a, ê_i⟩|
    scores: dict[str, float]     # alignment, mean_best_cos, diagonal_fraction
    jacobian_seconds: float


def n_represented(model: nn.Module, threshold: float = 0.75) -> int:
    """Number of features with (WᵀW)_ii ≥ threshold."""
    w = model.W.detach().double()
    return int(((w * w).sum(0) >= threshold).sum())


def tms_spectrum(model: nn.Module, x: torch.Tensor, beta: float, *, importance: float = 0.8,
                 top_k: int = 80, device: torch.device | str = "cpu", batch_size: int = 500) -> TMSSpectrum:
    """Top ``top_k`` eigenpairs of the (N·C)² class-major eNTK with g^c scaled by I_c^{β/2}.

    The Jacobian (N, C, P) comes from the kernel engine (float64); the eigenpairs from the
    P×P Gram, so the 25000² matrix of the paper's setting is never formed.
    """
    n_features = x.shape[1]
    weights = importance_weights(n_features, importance) ** float(beta)
    start = time.perf_counter()
    jac = kernels.jacobian(model, x, importance=weights, dtype=torch.float64, device=device,
                           batch_size=batch_size)
    jac_seconds = time.perf_counter() - start
    flat = flatten_jacobian(jac.cpu())
    eig = topk_from_jacobian(flat, top_k)
    heat = alignment_heatmap(tms_feature_vectors(x.numpy()), eig.vectors)
    return TMSSpectrum(float(beta), eig, heat, alignment_scores(heat), jac_seconds)


def tms_spectra(model: nn.Module, x: torch.Tensor, betas: Sequence[float], *, importance: float = 0.8,
                top_k: int = 80, device: torch.device | str = "cpu", batch_size: int = 500) -> list[TMSSpectrum]:
    """:func:`tms_spectrum` for a sweep of β with one Jacobian and one pass of per-class Grams.

    The engine's Jacobian is taken once without importance; each β's rescaling multiplies
    g^c by I_c^{β/2} (the engine's ``importance`` convention, checked against it in the tests)
    inside :func:`topk_class_weighted`.
    """
    n_features = x.shape[1]
    start = time.perf_counter()
    jac = kernels.jacobian(model, x, dtype=torch.float64, device=device, batch_size=batch_size).cpu()
    jac_seconds = time.perf_counter() - start
    base = importance_weights(n_features, importance)
    scales = [(base ** float(b)).sqrt().numpy() for b in betas]
    if jac.shape[2] > jac.shape[0] * jac.shape[1]:  # more parameters than rows: no Gram shortcut
        return [tms_spectrum(model, x, b, importance=importance, top_k=top_k, device=device,
                             batch_size=batch_size) for b in betas]
    eigs = topk_class_weighted(jac, top_k, scales)
    feats = tms_feature_vectors(x.numpy())
    out = []
    for b, eig in zip(betas, eigs):
        heat = alignment_heatmap(feats, eig.vectors)
        out.append(TMSSpectrum(float(b), eig, heat, alignment_scores(heat), jac_seconds / len(betas)))
    return out
