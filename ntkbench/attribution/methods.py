"""Attribution scores τ(x, i) of test points on training points, one function per method.

Every ``*_scores`` function returns a float64 array ``(n_test, n_train)``; every
``*_self_influence`` function returns τ(x_i, x_i) on the training points, ``(n_train,)``.
Sign convention throughout: τ(x, i) > 0 means training point i *supports* the network's
output for the true class of x (raises its true-class margin / lowers its loss), so that
``Σ_{i∈S} τ(x, i)`` should grow with the true-class margin of a model trained on S (LDS).

Methods
-------
``kglm``        kGLM attribution of a kernel (paper 001 eq. 3) for the true class c of x:
                ``A(x, x_i)^c = W_{c,i} κ(x, x_i) + b_c / N``. Binary kGLMs (one logit of
                class 1) are signed towards the true class: ``+A`` for y = 1, ``−A`` for y = 0.
``kernel-sim``  raw kernel similarity κ(x, x_i), optionally signed by label agreement
                (+κ when y_i = y_x, −κ otherwise).
``tracin``      TracIn-CP: ``Σ_t η_t ⟨∇ℓ(x; θ_t), ∇ℓ(x_i; θ_t)⟩`` over checkpoints θ_t.
``grad-dot``    ``⟨∇ℓ(x; θ*), ∇ℓ(x_i; θ*)⟩`` at the final weights.
``grad-cos``    the cosine of the same two gradients.
``trak``        TRAK (Park et al. 2023, Algorithm 1; single model unless several are given):
                ``Φ = [P ∇_θ f(x_i)]_i`` (N × K) with ``f = log(p_y / (1 − p_y))`` the
                true-class margin output, ``φ(x) = P ∇_θ f(x)``, and
                ``τ(x, i) = φ(x)ᵀ (ΦᵀΦ)⁻¹ φ_i · (1 − p_i)``, ``p_i = σ(f(x_i))`` the
                correct-class probability of training point i (TRAK's Q reweighting).
                With an ensemble of E models (own projection seed each):
                ``τ = mean_e[φ_e(x)ᵀ(Φ_eᵀΦ_e)⁻¹Φ_eᵀ] · diag(mean_e Q_e)``. No soft-thresholding.
                When K ≥ N, (ΦᵀΦ)⁻¹ is read as the pseudo-inverse (``ridge = 0``), which
                interpolates: τ(x_i, ·) = (1 − p_i) e_i; a ``ridge`` λ > 0 uses
                ``(ΦᵀΦ + λ · tr(ΦᵀΦ)/K · I)⁻¹`` instead.

ℓ is the training loss of one sample (argument ``loss``: the experiment's ``train.loss``,
``"cross_entropy"`` or ``"mse_sigmoid"``) and gradients cover all parameters
(:mod:`ntkbench.attribution.gradients`). TRAK's output function and (1 − p) weighting are
those of the logistic/softmax loss, whatever the training loss. Loss-gradient methods
materialise the training gradients, ``n_train · P`` float32 values, and stream the test side
in batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import nn

from ntkbench.attribution.gradients import (BATCH_SIZE, iter_per_sample_grads, output_values, per_sample_grads,
                                            projected_grads)
from ntkbench.config import schema_default

# TRAK's defaults are the config schema's (attribution.trak), the one place they are written.
TRAK_PROJ_DIM: int = schema_default("attribution", "trak", "proj_dim")
TRAK_PROJ_SEED: int = schema_default("attribution", "trak", "proj_seed")
TRAK_PROJ_TYPE: str = schema_default("attribution", "trak", "proj_type")
TRAK_RIDGE: float = schema_default("attribution", "trak", "ridge")
TRAK_ENSEMBLE: int = schema_default("attribution", "trak", "ensemble")

__all__ = [
    "METHODS",
    "GRADIENT_METHODS",
    "kglm_scores",
    "kglm_self_influence",
    "kernel_similarity_scores",
    "kernel_self_similarity",
    "grad_dot_scores",
    "grad_cos_scores",
    "grad_self_influence",
    "tracin_scores",
    "tracin_self_influence",
    "trak_scores",
    "trak_self_influence",
    "trak_features",
    "TrakFeatures",
    "gradient_method_scores",
    "gradient_method_self_influence",
    "TRAK_PROJ_DIM",
    "TRAK_PROJ_SEED",
    "TRAK_PROJ_TYPE",
    "TRAK_RIDGE",
    "TRAK_ENSEMBLE",
]

METHODS = ("kglm", "kernel-sim", "tracin", "grad-dot", "grad-cos", "trak")
GRADIENT_METHODS = ("tracin", "grad-dot", "grad-cos", "trak")
_EPS = 1e-30


def _true_class_sign(y: ArrayLike) -> NDArray[np.float64]:
    labels = np.asarray(y).astype(np.int64).ravel()
    return np.where(labels == 1, 1.0, -1.0)


def _coef_intercept(glm: Any) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    return np.asarray(glm.coef_, dtype=np.float64), np.asarray(glm.intercept_, dtype=np.float64)


# ------------------------------------------------------------------------------ kernels
def kglm_scores(glm: Any, K_test_train: ArrayLike, y_test: ArrayLike) -> NDArray[np.float64]:
    """kGLM attribution of each test point's true class, ``(n_test, N)``.

    ``glm`` is a fitted :class:`ntkbench.surrogate.KernelGLM` (anything with ``coef_``
    (C_out, N) and ``intercept_`` (C_out,)); ``K_test_train`` the test × train kernel the kGLM
    reads. Rows sum to the kGLM's true-class logit (binary: the signed logit).
    """
    K = np.asarray(K_test_train, dtype=np.float64)
    W, b = _coef_intercept(glm)
    y = np.asarray(y_test).astype(np.int64).ravel()
    if K.ndim != 2 or K.shape[1] != W.shape[1] or K.shape[0] != y.shape[0]:
        raise ValueError(f"K_test_train {K.shape}, coef {W.shape}, y {y.shape} do not fit together")
    n = W.shape[1]
    if W.shape[0] == 1:
        return _true_class_sign(y)[:, None] * (K * W[0] + b[0] / n)
    return K * W[y] + (b[y] / n)[:, None]


def kglm_self_influence(glm: Any, K_train_diag: ArrayLike, y_train: ArrayLike) -> NDArray[np.float64]:
    """``A(x_i, x_i)^{y_i}``: kGLM attribution of each training point to its own (possibly
    flipped) label, from the train × train kernel's diagonal ``(N,)``."""
    d = np.asarray(K_train_diag, dtype=np.float64).ravel()
    W, b = _coef_intercept(glm)
    y = np.asarray(y_train).astype(np.int64).ravel()
    n = W.shape[1]
    if d.shape != (n,) or y.shape != (n,):
        raise ValueError(f"need the diagonal and labels of the {n} training points")
    idx = np.arange(n)
    if W.shape[0] == 1:
        return _true_class_sign(y) * (d * W[0] + b[0] / n)
    return d * W[y, idx] + b[y] / n


def kernel_similarity_scores(K_test_train: ArrayLike, y_test: ArrayLike | None = None,
                             y_train: ArrayLike | None = None) -> NDArray[np.float64]:
    """κ(x, x_i) as given, ``(n_test, N)``; with both label vectors, signed by label agreement
    (``+κ`` where ``y_i = y_x``, ``−κ`` elsewhere)."""
    K = np.array(K_test_train, dtype=np.float64)
    if (y_test is None) != (y_train is None):
        raise ValueError("pass both y_test and y_train (signed) or neither (raw)")
    if y_test is not None:
        agree = np.asarray(y_test).ravel()[:, None] == np.asarray(y_train).ravel()[None, :]
        K = np.where(agree, K, -K)
    return K


def kernel_self_similarity(K_train_diag: ArrayLike) -> NDArray[np.float64]:
    """κ(x_i, x_i) (N,): constant 1 for a normalised kernel (no detection power by design)."""
    return np.asarray(K_train_diag, dtype=np.float64).ravel().copy()


# ------------------------------------------------------------------------------ loss gradients
def _gram(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, G_train: torch.Tensor,
          state_dict: Mapping[str, torch.Tensor] | None, batch_size: int, normalise: bool,
          loss: str = "cross_entropy") -> NDArray[np.float64]:
    out = np.empty((len(x_test), len(G_train)), dtype=np.float64)
    norms_train = G_train.double().norm(dim=1).clamp_min(_EPS) if normalise else None
    for start, g in iter_per_sample_grads(model, x_test, y_test, "loss", state_dict, batch_size,
                                          G_train.device, loss=loss):
        block = (g @ G_train.T).double()
        if normalise:
            block = block / g.double().norm(dim=1).clamp_min(_EPS)[:, None] / norms_train[None, :]
        out[start:start + len(g)] = block.cpu().numpy()
    return out


def grad_dot_scores(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, x_train: torch.Tensor,
                    y_train: torch.Tensor, state_dict: Mapping[str, torch.Tensor] | None = None,
                    batch_size: int = BATCH_SIZE, device: torch.device | str | None = None,
                    loss: str = "cross_entropy") -> NDArray[np.float64]:
    """``⟨∇ℓ(x), ∇ℓ(x_i)⟩`` at the model's weights (or ``state_dict``'s), ``(n_test, n_train)``."""
    G = per_sample_grads(model, x_train, y_train, "loss", state_dict, batch_size, device, loss=loss)
    return _gram(model, x_test, y_test, G, state_dict, batch_size, normalise=False, loss=loss)


def grad_cos_scores(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, x_train: torch.Tensor,
                    y_train: torch.Tensor, state_dict: Mapping[str, torch.Tensor] | None = None,
                    batch_size: int = BATCH_SIZE, device: torch.device | str | None = None,
                    loss: str = "cross_entropy") -> NDArray[np.float64]:
    """Cosine of ``∇ℓ(x)`` and ``∇ℓ(x_i)`` (0 where a gradient vanishes), ``(n_test, n_train)``."""
    G = per_sample_grads(model, x_train, y_train, "loss", state_dict, batch_size, device, loss=loss)
    return _gram(model, x_test, y_test, G, state_dict, batch_size, normalise=True, loss=loss)


def grad_self_influence(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                        state_dict: Mapping[str, torch.Tensor] | None = None, batch_size: int = BATCH_SIZE,
                        device: torch.device | str | None = None, loss: str = "cross_entropy"
                        ) -> NDArray[np.float64]:
    """Grad-Dot self-influence ``‖∇ℓ(x_i)‖²`` (N,). (Grad-Cos self-influence is 1.)"""
    out = np.empty(len(x_train), dtype=np.float64)
    for start, g in iter_per_sample_grads(model, x_train, y_train, "loss", state_dict, batch_size, device,
                                          loss=loss):
        out[start:start + len(g)] = (g.double() ** 2).sum(1).cpu().numpy()
    return out


def _checkpoint_pairs(checkpoints: Sequence[Any]) -> list[tuple[Mapping[str, torch.Tensor], float]]:
    """Accept :class:`~ntkbench.attribution.retrain.Checkpoint` objects or (state_dict, lr) pairs."""
    pairs = []
    for c in checkpoints:
        if hasattr(c, "state_dict") and hasattr(c, "lr"):
            pairs.append((c.state_dict, float(c.lr)))
        else:
            sd, lr = c
            pairs.append((sd, float(lr)))
    if not pairs:
        raise ValueError("TracIn-CP needs at least one checkpoint")
    return pairs


def tracin_scores(model: nn.Module, checkpoints: Sequence[Any], x_test: torch.Tensor, y_test: torch.Tensor,
                  x_train: torch.Tensor, y_train: torch.Tensor, batch_size: int = BATCH_SIZE,
                  device: torch.device | str | None = None, loss: str = "cross_entropy") -> NDArray[np.float64]:
    """TracIn-CP ``Σ_t η_t ⟨∇ℓ(x; θ_t), ∇ℓ(x_i; θ_t)⟩``, ``(n_test, n_train)``.

    ``model`` supplies the architecture; ``checkpoints`` are ``Checkpoint`` objects or
    ``(state_dict, lr)`` pairs.
    """
    total = np.zeros((len(x_test), len(x_train)), dtype=np.float64)
    for sd, lr in _checkpoint_pairs(checkpoints):
        total += lr * grad_dot_scores(model, x_test, y_test, x_train, y_train, sd, batch_size, device, loss)
    return total


def tracin_self_influence(model: nn.Module, checkpoints: Sequence[Any], x_train: torch.Tensor,
                          y_train: torch.Tensor, batch_size: int = BATCH_SIZE,
                          device: torch.device | str | None = None, loss: str = "cross_entropy"
                          ) -> NDArray[np.float64]:
    """TracIn-CP self-influence ``Σ_t η_t ‖∇ℓ(x_i; θ_t)‖²`` (N,)."""
    total = np.zeros(len(x_train), dtype=np.float64)
    for sd, lr in _checkpoint_pairs(checkpoints):
        total += lr * grad_self_influence(model, x_train, y_train, sd, batch_size, device, loss)
    return total


# ------------------------------------------------------------------------------ TRAK
@dataclass
class TrakFeatures:
    """Per-model TRAK features: Φ_train (N, K), φ_test (n_test, K), ``one_minus_p`` (N,)."""

    phi_train: NDArray[np.float64]
    phi_test: NDArray[np.float64]
    one_minus_p: NDArray[np.float64]


def trak_features(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, x_train: torch.Tensor,
                  y_train: torch.Tensor, proj_dim: int = TRAK_PROJ_DIM, proj_seed: int = TRAK_PROJ_SEED,
                  proj_type: str = TRAK_PROJ_TYPE,
                  state_dict: Mapping[str, torch.Tensor] | None = None, batch_size: int = BATCH_SIZE,
                  device: torch.device | str | None = None) -> TrakFeatures:
    """Projected margin gradients of one model and its training points' ``1 − p_y``."""
    kw = dict(output="margin", proj_type=proj_type, state_dict=state_dict, batch_size=batch_size, device=device)
    phi_train = projected_grads(model, x_train, y_train, proj_dim, proj_seed, **kw)
    phi_test = projected_grads(model, x_test, y_test, proj_dim, proj_seed, **kw)
    margin = output_values(model, x_train, y_train, "margin", state_dict, device=device).numpy()
    one_minus_p = 1.0 / (1.0 + np.exp(margin))  # 1 − σ(f) = σ(−f)
    return TrakFeatures(phi_train.double().cpu().numpy(), phi_test.double().cpu().numpy(), one_minus_p)


def _trak_kernel(phi_a: NDArray[np.float64], phi_train: NDArray[np.float64], ridge: float) -> NDArray[np.float64]:
    """``φ_a (ΦᵀΦ)⁻¹ Φᵀ`` (n_a, N), float64; pseudo-inverse for ``ridge = 0``."""
    n, k = phi_train.shape
    if ridge == 0:
        return phi_a @ np.linalg.pinv(phi_train)  # pinv(Φ) = (ΦᵀΦ)⁺ Φᵀ
    if ridge < 0:
        raise ValueError(f"ridge must be non-negative, got {ridge}")
    lam = ridge * float(np.einsum("ij,ij->", phi_train, phi_train)) / k
    if k <= n:
        gram = phi_train.T @ phi_train + lam * np.eye(k)
        return np.linalg.solve(gram, phi_a.T).T @ phi_train.T
    gram = phi_train @ phi_train.T + lam * np.eye(n)  # push-through identity (dual form)
    return np.linalg.solve(gram, phi_train @ phi_a.T).T


def trak_scores(features: TrakFeatures | Sequence[TrakFeatures], ridge: float = TRAK_RIDGE) -> NDArray[np.float64]:
    """TRAK scores ``(n_test, N)`` from one model's or an ensemble's :class:`TrakFeatures`."""
    feats = [features] if isinstance(features, TrakFeatures) else list(features)
    if not feats:
        raise ValueError("trak_scores needs at least one model's features")
    kern = np.mean([_trak_kernel(f.phi_test, f.phi_train, ridge) for f in feats], axis=0)
    q = np.mean([f.one_minus_p for f in feats], axis=0)
    return kern * q[None, :]


def trak_self_influence(features: TrakFeatures | Sequence[TrakFeatures], ridge: float = TRAK_RIDGE) -> NDArray[np.float64]:
    """TRAK self-influence ``φ_iᵀ(ΦᵀΦ)⁻¹φ_i (1 − p_i)`` (ensemble-averaged), ``(N,)``."""
    feats = [features] if isinstance(features, TrakFeatures) else list(features)
    lev = np.mean([np.diagonal(_trak_kernel(f.phi_train, f.phi_train, ridge)) for f in feats], axis=0)
    q = np.mean([f.one_minus_p for f in feats], axis=0)
    return lev * q


# ------------------------------------------------------------------------------ all at once
def _trak_feature_list(model, trak_models, x_a, y_a, x_train, y_train, proj_dim, proj_seed, proj_type,
                       batch_size, device) -> list[TrakFeatures]:
    """Features of every TRAK member: a module, or a state dict of ``model``'s architecture
    (e.g. a subset network's); member e is projected with seed ``proj_seed + e``."""
    members = list(trak_models) if trak_models else [model]
    out = []
    for e, member in enumerate(members):
        net, sd = (model, member) if isinstance(member, Mapping) else (member, None)
        out.append(trak_features(net, x_a, y_a, x_train, y_train, proj_dim, proj_seed + e, proj_type, state_dict=sd,
                                  batch_size=batch_size, device=device))
    return out


def _trak_names(trak_ensembles: Sequence[int] | None) -> list[tuple[str, int | None]]:
    """(method name, members) of the TRAK rows: ``trak`` (every member) or ``trak-k`` per k."""
    if not trak_ensembles:
        return [("trak", None)]
    return [(f"trak-{int(k)}", int(k)) for k in trak_ensembles]


def _check_ensembles(trak_ensembles: Sequence[int] | None, trak_models: Sequence[Any]) -> None:
    if trak_ensembles and max(trak_ensembles) > max(1, len(trak_models)):
        raise ValueError(f"TRAK ensembles {list(trak_ensembles)} need {max(trak_ensembles)} members, "
                         f"got {max(1, len(trak_models))}")


def _projected_loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, grad_proj: tuple[int, int, str],
                          state_dict: Mapping[str, torch.Tensor] | None, batch_size: int,
                          device: torch.device | str | None, loss: str) -> torch.Tensor:
    proj_dim, seed, proj_type = grad_proj
    return projected_grads(model, x, y, proj_dim, seed, output="loss", proj_type=proj_type, state_dict=state_dict,
                           batch_size=batch_size, device=device, loss=loss).double()


def _dot(a: torch.Tensor, b: torch.Tensor, normalise: bool = False) -> NDArray[np.float64]:
    out = a @ b.T
    if normalise:
        out = out / a.norm(dim=1).clamp_min(_EPS)[:, None] / b.norm(dim=1).clamp_min(_EPS)[None, :]
    return out.cpu().numpy()


def gradient_method_scores(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor,
                           x_train: torch.Tensor, y_train: torch.Tensor, checkpoints: Sequence[Any] = (),
                           methods: Sequence[str] = GRADIENT_METHODS, proj_dim: int = TRAK_PROJ_DIM,
                           proj_seed: int = TRAK_PROJ_SEED, proj_type: str = TRAK_PROJ_TYPE, ridge: float = TRAK_RIDGE,
                           trak_models: Sequence[nn.Module | Mapping[str, torch.Tensor]] = (),
                           batch_size: int = BATCH_SIZE, device: torch.device | str | None = None,
                           loss: str = "cross_entropy", grad_proj_dim: int | None = None,
                           trak_ensembles: Sequence[int] | None = None) -> dict[str, NDArray[np.float64]]:
    """Scores ``(n_test, n_train)`` of the loss-gradient ``methods`` (subset of
    :data:`GRADIENT_METHODS`) for the final ``model``; the final-weight training gradients are
    computed once for Grad-Dot and Grad-Cos.

    Args:
        checkpoints: TracIn's ``(state_dict, weight)`` pairs or ``Checkpoint`` objects: the
            checkpoints of one run with their learning rates (TracIn-CP), or final models of
            several seeds with a fixed weight (dattri's TracIn).
        trak_models: the TRAK ensemble, modules or state dicts of ``model``'s architecture
            (member e projected with seed ``proj_seed + e``); default: ``model`` alone.
        grad_proj_dim: None: TracIn, Grad-Dot and Grad-Cos on the full loss gradients; an int:
            on loss gradients projected to that many dimensions (seed ``proj_seed``, as
            dattri's benchmark does with 512).
        trak_ensembles: None: one ``"trak"`` entry over every member; a list of k: entries
            ``"trak-k"`` over the first k members each (dattri's TRAK-1/10/50).

    Returns:
        ``{method: (n_test, n_train) float64}`` in the order of ``methods`` (TRAK expanded).
    """
    unknown = set(methods) - set(GRADIENT_METHODS)
    if unknown:
        raise ValueError(f"unknown gradient methods {sorted(unknown)}; choose from {GRADIENT_METHODS}")
    _check_ensembles(trak_ensembles, trak_models)
    grad_proj = (int(grad_proj_dim), int(proj_seed), proj_type) if grad_proj_dim else None
    out: dict[str, NDArray[np.float64]] = {}
    if "grad-dot" in methods or "grad-cos" in methods:
        if grad_proj:
            Ptr = _projected_loss_grads(model, x_train, y_train, grad_proj, None, batch_size, device, loss)
            Pte = _projected_loss_grads(model, x_test, y_test, grad_proj, None, batch_size, device, loss)
            if "grad-dot" in methods:
                out["grad-dot"] = _dot(Pte, Ptr)
            if "grad-cos" in methods:
                out["grad-cos"] = _dot(Pte, Ptr, normalise=True)
        else:
            G = per_sample_grads(model, x_train, y_train, "loss", None, batch_size, device, loss=loss)
            if "grad-dot" in methods:
                out["grad-dot"] = _gram(model, x_test, y_test, G, None, batch_size, normalise=False, loss=loss)
            if "grad-cos" in methods:
                out["grad-cos"] = _gram(model, x_test, y_test, G, None, batch_size, normalise=True, loss=loss)
            del G
    if "tracin" in methods:
        if grad_proj:
            out["tracin"] = sum(lr * _dot(_projected_loss_grads(model, x_test, y_test, grad_proj, sd, batch_size, device, loss),
                                          _projected_loss_grads(model, x_train, y_train, grad_proj, sd, batch_size, device,
                                                                loss))
                                for sd, lr in _checkpoint_pairs(checkpoints))
        else:
            out["tracin"] = tracin_scores(model, checkpoints, x_test, y_test, x_train, y_train, batch_size, device, loss)
    trak_rows = _trak_names(trak_ensembles)
    if "trak" in methods:
        feats = _trak_feature_list(model, trak_models, x_test, y_test, x_train, y_train, proj_dim, proj_seed, proj_type,
                                   batch_size, device)
        for name, k in trak_rows:
            out[name] = trak_scores(feats if k is None else feats[:k], ridge)
    # in the order of ``methods``, "trak" expanded into its rows
    return {n: out[n] for m in methods for n in ([name for name, _ in trak_rows] if m == "trak" else [m])}


def gradient_method_self_influence(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                                   checkpoints: Sequence[Any] = (), methods: Sequence[str] = GRADIENT_METHODS,
                                   proj_dim: int = TRAK_PROJ_DIM, proj_seed: int = TRAK_PROJ_SEED,
                                   proj_type: str = TRAK_PROJ_TYPE,
                                   ridge: float = TRAK_RIDGE,
                                   trak_models: Sequence[nn.Module | Mapping[str, torch.Tensor]] = (),
                                   batch_size: int = BATCH_SIZE, device: torch.device | str | None = None,
                                   loss: str = "cross_entropy", grad_proj_dim: int | None = None,
                                   trak_ensembles: Sequence[int] | None = None) -> dict[str, NDArray[np.float64]]:
    """Self-influence τ(x_i, x_i) ``(n_train,)`` of the loss-gradient ``methods`` (arguments as
    :func:`gradient_method_scores`)."""
    _check_ensembles(trak_ensembles, trak_models)
    grad_proj = (int(grad_proj_dim), int(proj_seed), proj_type) if grad_proj_dim else None
    out: dict[str, NDArray[np.float64]] = {}
    for m in methods:
        if m == "grad-dot":
            if grad_proj:
                P = _projected_loss_grads(model, x_train, y_train, grad_proj, None, batch_size, device, loss)
                out[m] = (P ** 2).sum(1).cpu().numpy()
            else:
                out[m] = grad_self_influence(model, x_train, y_train, None, batch_size, device, loss)
        elif m == "grad-cos":
            out[m] = np.ones(len(x_train))
        elif m == "tracin":
            if grad_proj:
                out[m] = sum(lr * (_projected_loss_grads(model, x_train, y_train, grad_proj, sd, batch_size, device,
                                                         loss) ** 2).sum(1).cpu().numpy()
                             for sd, lr in _checkpoint_pairs(checkpoints))
            else:
                out[m] = tracin_self_influence(model, checkpoints, x_train, y_train, batch_size, device, loss)
        elif m == "trak":
            feats = _trak_feature_list(model, trak_models, x_train[:0], y_train[:0], x_train, y_train,
                                       proj_dim, proj_seed, proj_type, batch_size, device)
            for name, k in _trak_names(trak_ensembles):
                out[name] = trak_self_influence(feats if k is None else feats[:k], ridge)
        else:
            raise ValueError(f"unknown gradient method {m!r}; choose from {GRADIENT_METHODS}")
    return out
