"""Faithfulness metrics between a network and its kernel-GLM surrogate (paper 001, §3, G, H, L).

Conventions shared by every function here:

* ``logits`` are ``(M, C)`` arrays. ``C == 1`` means a binary single-output network
  (sigmoid; the logit is that of class 1); ``C >= 2`` means softmax over ``C`` classes.
  A 1-D ``(M,)`` array is accepted and treated as ``(M, 1)`` (what sklearn's binary
  ``decision_function`` returns).
* ``y`` are integer labels in ``0..C-1`` (``0/1`` for binary), shape ``(M,)``.
* Everything probability-like is computed in float64 from the logits, in log space.
  Probabilities that saturate to exactly 1.0 (in float32 already for a logit of ~17)
  create ties, and the rank-based metrics (Kendall τ, Spearman) become meaningless on
  easy tasks; log-probabilities keep the ordering.

Two Kendall τ are reported (SPEC §2):

* ``tau`` (:func:`kendall_tau`) is τ_K as the reference code computed it, which produced the
  published numbers: for a binary network (C = 1) it ranks the network's float32 class-1
  probability σ(F(x)) against the kGLM's class-1 output, over the test points whose float32
  probability is not exactly 0.0 or 1.0; for C ≥ 2 it ranks the true-class softmax
  probabilities (through float64 log-softmax).
* ``tau_true_class`` (:func:`kendall_tau_true_class`) ranks the true-class log-probabilities
  (float64 log-sigmoid / log-softmax) of every test point, for every C. For C ≥ 2 it equals
  ``tau``. For binary tasks it is stricter: it only ranks "how sure of the right class", while
  the reference measure also ranks across the two classes (a point the network calls class 0
  with 99% sits below one it calls class 1 with 51%). When both models are nearly certain
  everywhere, the true-class ranks are mostly noise, so this τ is unstable on easy binary tasks.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

# scipy.stats and scipy.optimize are imported where used: together they take ~1 s to import,
# and every workflow job (train, kernels, ...) imports this module.

__all__ = [
    "as_logits",
    "true_class_log_prob",
    "true_class_logit",
    "predicted_labels",
    "accuracy",
    "kendall_tau",
    "kendall_tau_true_class",
    "reference_tau_pair",
    "pearson",
    "spearman",
    "test_accuracy_differential",
    "misclassification_coincidence",
    "linear_realisation",
    "realisation_phi",
    "precision_recall",
    "mean_sem",
    "faithfulness",
    "FAITHFULNESS_KEYS",
]

#: Keys of the dict returned by :func:`faithfulness`, in order.
FAITHFULNESS_KEYS: tuple[str, ...] = (
    "nn_test_acc",
    "kglm_test_acc",
    "tad",
    "tau",
    "tau_true_class",
    "tau_n_used",
    "r_miss",
    "pearson",
    "spearman",
    "r2_linear",
    "r2_logistic",
    "r2_arctan",
)

# Appendix L masks NN probabilities this close to 0 or 1: their logit is numerically unstable.
PROBABILITY_MASK_EPS = 1e-7


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------


def as_logits(logits: ArrayLike, name: str = "logits") -> NDArray[np.float64]:
    """Return ``logits`` as a float64 ``(M, C)`` array (a 1-D input becomes ``(M, 1)``).

    Raises ``ValueError`` for other dimensionalities, an empty class axis, or non-finite values.
    """
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (M, C) or (M,), got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"{name} has no class columns (shape {array.shape})")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _as_labels(y: ArrayLike, n_rows: int, n_classes: int, name: str = "y") -> NDArray[np.int64]:
    """Validate integer labels against the number of rows and classes of a logits array."""
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D label array, got shape {labels.shape}")
    if labels.shape[0] != n_rows:
        raise ValueError(f"{name} has {labels.shape[0]} labels but the logits have {n_rows} rows")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        # Float labels that are whole numbers (e.g. 0.0/1.0 from torch) are accepted.
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError(f"{name} must hold integer class labels, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    n_label_values = 2 if n_classes == 1 else n_classes
    if labels.size and (labels.min() < 0 or labels.max() >= n_label_values):
        raise ValueError(
            f"{name} must lie in 0..{n_label_values - 1} for logits with C={n_classes} "
            f"column(s), got values in {labels.min()}..{labels.max()}"
        )
    return labels


def _paired_logits(
    nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Validate a (network, surrogate, labels) triple that must describe the same test set."""
    nn = as_logits(nn_logits, "nn_logits")
    kglm = as_logits(kglm_logits, "kglm_logits")
    if nn.shape != kglm.shape:
        raise ValueError(
            f"nn_logits {nn.shape} and kglm_logits {kglm.shape} must have the same shape (M, C)"
        )
    labels = _as_labels(y, nn.shape[0], nn.shape[1])
    return nn, kglm, labels


# --------------------------------------------------------------------------------------
# Per-example quantities
# --------------------------------------------------------------------------------------


def true_class_log_prob(logits: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """Log-probability of the true class, float64, shape ``(M,)``.

    Binary (``C == 1``): ``log σ(z)`` for ``y == 1`` and ``log σ(−z) = log(1 − σ(z))`` for
    ``y == 0``. Multi-class: ``log_softmax(z)[y]``. Both are evaluated stably, so large
    logits give distinct, finite values instead of ``log(1.0) = 0``.
    """
    z = as_logits(logits)
    labels = _as_labels(y, z.shape[0], z.shape[1])
    if z.shape[1] == 1:
        signed = np.where(labels == 1, z[:, 0], -z[:, 0])
        return special.log_expit(signed)
    return special.log_softmax(z, axis=1)[np.arange(z.shape[0]), labels]


def true_class_logit(logits: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """``logit(p_true) = log(p / (1 − p))`` of the true-class probability, float64, ``(M,)``.

    This is the "logit space" of appendix L. Binary: the signed logit ``±z``. Multi-class:
    ``z_y − logsumexp_{j≠y} z_j`` (the true class against all others), computed without
    forming ``p``, so it stays finite when ``p`` rounds to 1.
    """
    z = as_logits(logits)
    labels = _as_labels(y, z.shape[0], z.shape[1])
    rows = np.arange(z.shape[0])
    if z.shape[1] == 1:
        return np.where(labels == 1, z[:, 0], -z[:, 0])
    others = z.copy()
    others[rows, labels] = -np.inf
    return z[rows, labels] - special.logsumexp(others, axis=1)


def predicted_labels(logits: ArrayLike) -> NDArray[np.int64]:
    """Predicted class per row: ``z > 0`` for binary (``C == 1``, ties go to class 0,
    as in sklearn), ``argmax`` otherwise (ties go to the lowest index)."""
    z = as_logits(logits)
    if z.shape[1] == 1:
        return (z[:, 0] > 0).astype(np.int64)
    return np.argmax(z, axis=1).astype(np.int64)


def accuracy(logits: ArrayLike, y: ArrayLike) -> float:
    """Fraction of rows whose predicted class equals ``y`` (in [0, 1]; NaN for M = 0)."""
    z = as_logits(logits)
    labels = _as_labels(y, z.shape[0], z.shape[1])
    if labels.size == 0:
        return math.nan
    return float(np.mean(predicted_labels(z) == labels))


# --------------------------------------------------------------------------------------
# Correlations between the network and the surrogate
# --------------------------------------------------------------------------------------

Space = Literal["log_proba", "proba"]


def _true_class_pair(
    nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike, space: Space = "log_proba"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    nn, kglm, labels = _paired_logits(nn_logits, kglm_logits, y)
    nn_lp, kglm_lp = true_class_log_prob(nn, labels), true_class_log_prob(kglm, labels)
    if space == "log_proba":
        return nn_lp, kglm_lp
    if space == "proba":
        return np.exp(nn_lp), np.exp(kglm_lp)
    raise ValueError(f"space must be 'log_proba' or 'proba', got {space!r}")


def _kendall(a: NDArray, b: NDArray) -> float:
    """scipy's τ-b, NaN (without a warning) for fewer than two points or a constant side."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    from scipy import stats

    return float(stats.kendalltau(a, b).statistic)


def reference_tau_pair(
    nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike
) -> tuple[NDArray, NDArray]:
    """The two vectors the reference τ_K ranks against each other (after masking).

    * Binary (``C == 1``): the network's class-1 probability ``σ(F(x))`` computed in float32
      (as the reference code did, ``torch.sigmoid`` of the float32 network output) and the
      kGLM's class-1 logit (float64; τ is rank-based and the logit is a monotone function of
      the kGLM's class-1 probability). Test points whose float32 probability is exactly 0.0
      or 1.0 are dropped — the reference's mask. The float32 probabilities keep their ties
      (e.g. 0.99999994 for many points), as in the reference.
    * ``C ≥ 2``: the true-class log-softmax probabilities of both, float64, no masking.

    Returns ``(nn_side, kglm_side)``; their common length is the number of points used.
    """
    nn, kglm, labels = _paired_logits(nn_logits, kglm_logits, y)
    if nn.shape[1] == 1:
        prob32 = special.expit(nn[:, 0].astype(np.float32))
        keep = (prob32 != np.float32(0.0)) & (prob32 != np.float32(1.0))
        return prob32[keep], kglm[keep, 0]
    return true_class_log_prob(nn, labels), true_class_log_prob(kglm, labels)


def kendall_tau(nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike) -> float:
    """τ_K as the reference code computed it (``tau``; see :func:`reference_tau_pair`).

    Binary: Kendall τ-b between the network's float32 class-1 probability and the kGLM's
    class-1 output, over the points whose float32 probability is not exactly 0 or 1.
    Multi-class: τ-b between the true-class probabilities (float64 log-softmax).
    NaN when fewer than two points remain or either side is constant.
    """
    return _kendall(*reference_tau_pair(nn_logits, kglm_logits, y))


def kendall_tau_true_class(nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike) -> float:
    """``tau_true_class``: Kendall τ-b between the true-class log-probabilities of the network
    and of the surrogate, float64 log-sigmoid / log-softmax, every test point (no masking).

    Monotone in the true-class probability, so this is the paper's text's "probability of the
    correct class", without the spurious ties of saturated probabilities. Equals
    :func:`kendall_tau` for C ≥ 2. NaN when fewer than two rows or when either side is constant.
    """
    return _kendall(*_true_class_pair(nn_logits, kglm_logits, y))


def pearson(
    nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike, space: Space = "log_proba"
) -> float:
    """Pearson r between the true-class quantities of network and surrogate (appendix H).

    ``space="log_proba"`` (default, the same quantity as τ) or ``"proba"`` (the paper's
    appendix-H setting, where saturated probabilities anchor r near 1). NaN when undefined.
    """
    a, b = _true_class_pair(nn_logits, kglm_logits, y, space)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    from scipy import stats

    return float(stats.pearsonr(a, b).statistic)


def spearman(
    nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike, space: Space = "log_proba"
) -> float:
    """Spearman ρ between the true-class quantities of network and surrogate (appendix H).

    Rank-based, so ``space`` only matters through ties of saturated probabilities.
    """
    a, b = _true_class_pair(nn_logits, kglm_logits, y, space)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


# --------------------------------------------------------------------------------------
# Agreement of decisions
# --------------------------------------------------------------------------------------


def test_accuracy_differential(
    nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike
) -> float:
    """TAD (eq. 20) in percent: ``(accuracy(kGLM) − accuracy(NN)) × 100``."""
    nn, kglm, labels = _paired_logits(nn_logits, kglm_logits, y)
    return (accuracy(kglm, labels) - accuracy(nn, labels)) * 100.0


# pytest would otherwise try to collect the function above as a test.
test_accuracy_differential.__test__ = False  # type: ignore[attr-defined]


def misclassification_coincidence(
    nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike
) -> float:
    """R_miss (eq. 21): ``|NN wrong ∧ kGLM wrong ∧ same prediction| / |NN wrong ∨ kGLM wrong|``.

    1.0 means the two models err on exactly the same points and predict the same wrong
    class there. Returns NaN when neither model misclassifies anything (0/0: there is no
    error to coincide on); aggregate with NaN-aware means (:func:`mean_sem`).
    """
    nn, kglm, labels = _paired_logits(nn_logits, kglm_logits, y)
    nn_pred, kglm_pred = predicted_labels(nn), predicted_labels(kglm)
    nn_wrong, kglm_wrong = nn_pred != labels, kglm_pred != labels
    either_wrong = int(np.sum(nn_wrong | kglm_wrong))
    if either_wrong == 0:
        return math.nan
    coincident = int(np.sum(nn_wrong & kglm_wrong & (nn_pred == kglm_pred)))
    return coincident / either_wrong


# --------------------------------------------------------------------------------------
# Linear realisation (appendix L)
# --------------------------------------------------------------------------------------


def _phi_linear(x: NDArray, nu: float, mu: float) -> NDArray:
    """Φ¹(x) = ν x + μ."""
    return nu * x + mu


def _phi_logistic(x: NDArray, nu: float, mu: float, alpha: float, beta: float) -> NDArray:
    """Φ²(x) = ν · exp((x−α)/β) / (1 + exp((x−α)/β)) + μ  (= ν σ((x−α)/β) + μ)."""
    return nu * special.expit((x - alpha) / beta) + mu


def _phi_arctan(x: NDArray, nu: float, mu: float, alpha: float, beta: float) -> NDArray:
    """Φ³(x) = (ν/π) · arctan(−(x−α)/(2β)) + 1/2 + μ."""
    return nu / np.pi * np.arctan(-(x - alpha) / (2.0 * beta)) + 0.5 + mu


REALISATION_FUNCTIONS: dict[str, Callable[..., NDArray]] = {
    "linear": _phi_linear,
    "logistic": _phi_logistic,
    "arctan": _phi_arctan,
}


def realisation_phi(name: str, x: ArrayLike, params: ArrayLike) -> NDArray[np.float64]:
    """Φ ``name`` ∈ {linear, logistic, arctan} with fitted ``params`` (as
    :func:`linear_realisation` returns them in ``params_<name>``) at kGLM logits ``x``, float64,
    the shape of ``x``."""
    if name not in REALISATION_FUNCTIONS:
        raise ValueError(f"unknown realisation function {name!r}; choose one of {sorted(REALISATION_FUNCTIONS)}")
    return REALISATION_FUNCTIONS[name](np.asarray(x, dtype=np.float64), *[float(p) for p in params])


def _initial_guesses(x: NDArray, nn_logit: NDArray) -> dict[str, list[float]]:
    """Starting points for ``curve_fit`` from a straight-line fit in logit space.

    ``logit(p_NN) ≈ a x + b`` means ``p_NN ≈ σ((x − α)/β)`` with ``β = 1/a``, ``α = −b/a``;
    the arctan form has the same slope at its centre for ``β₃ = −2β/π``. Without this the
    sigmoid fits often stall far from the optimum.
    """
    slope, intercept = np.polyfit(x, nn_logit, 1) if np.ptp(x) > 0 else (1.0, 0.0)
    if not np.isfinite(slope) or abs(slope) < 1e-8:
        slope = 1e-8 if slope >= 0 else -1e-8
    beta = 1.0 / slope
    alpha = -intercept / slope
    prob = special.expit(nn_logit)
    lin_slope, lin_intercept = np.polyfit(x, prob, 1) if np.ptp(x) > 0 else (0.0, prob.mean())
    return {
        "linear": [float(lin_slope), float(lin_intercept)],
        "logistic": [1.0, 0.0, float(alpha), float(beta)],
        "arctan": [1.0, 0.0, float(alpha), float(-2.0 * beta / np.pi)],
    }


def _r2(observed: NDArray, predicted: NDArray) -> float:
    """Coefficient of determination 1 − SS_res/SS_tot (appendix G); NaN when SS_tot = 0."""
    ss_tot = float(np.sum((observed - observed.mean()) ** 2))
    if observed.size < 2 or ss_tot == 0.0:
        return math.nan
    return 1.0 - float(np.sum((observed - predicted) ** 2)) / ss_tot


def linear_realisation(
    kglm_logits: ArrayLike,
    nn_logits: ArrayLike,
    y: ArrayLike,
    seed: int = 0,
    outputs: Literal["paper", "true_class"] = "paper",
    eps: float = PROBABILITY_MASK_EPS,
    maxfev: int = 20000,
    return_pairs: bool = False,
) -> dict[str, Any]:
    """Point-for-point realisation of the network by the surrogate (appendix L).

    Each Φ ∈ {linear, logistic, arctan} maps a kGLM logit ``x`` onto the network's
    probability ``p`` of the same output:

    * ``Φ¹(x) = ν x + μ``
    * ``Φ²(x) = ν exp((x−α)/β) / (1 + exp((x−α)/β)) + μ``
    * ``Φ³(x) = (ν/π) arctan(−(x−α)/(2β)) + 1/2 + μ``

    Which outputs are paired (``outputs``):

    * ``"paper"`` (default): binary networks use class 1 (the single logit, ``x = z``,
      ``p = σ(z_NN)``), as appendix L states; multi-class networks pair every class of every
      test point, ``x = kGLM(x)^c``, ``p = softmax(F(x))_c`` (the flattened regression of
      appendix L.1).
    * ``"true_class"``: one pair per test point, the true class ``c = y``: ``x`` is the
      kGLM's true-class logit (``±z`` for binary, ``kGLM(x)^y`` otherwise), ``p`` the
      network's true-class probability — the quantity τ_K ranks.

    Pairs whose ``p`` lies within ``eps`` of 0 or 1 are masked (their logit is numerically
    unstable, as in the paper). Test points are split at random (``seed``) into a fit half
    and an evaluation half (all pairs of a point go to the same half). Φ is fitted with
    ``scipy.optimize.curve_fit`` on the L2 loss ``Σ (p − Φ(x))²`` of the fit half; R² is
    evaluated on the other half in logit space (appendix G),
    ``R² = 1 − Σ (logit p − logit Φ(x))² / Σ (logit p − mean)²``, with Φ(x) clipped into
    ``[eps, 1 − eps]`` first (the linear Φ leaves (0, 1)). All in float64; ``logit p`` is
    computed from the network's logits directly, never from a rounded ``p``.

    Note the argument order (surrogate first: Φ maps the kGLM onto the NN).

    Returns a dict with ``r2_linear``, ``r2_logistic``, ``r2_arctan`` (NaN where the fit
    does not converge or too few unmasked pairs remain), ``params_<name>`` (fitted
    ``[ν, μ]`` or ``[ν, μ, α, β]``, ``None`` on failure), ``n_masked``, ``n_fit``,
    ``n_eval`` (numbers of pairs). With ``return_pairs``, also ``eval_pairs``: the held-out
    pairs R² is computed on, a dict of ``(n_eval,)`` arrays ``point`` (test-point row),
    ``output`` (the network output paired: class 1 for a binary network, else the class),
    ``kglm_logit`` (x) and ``nn_logit`` (logit of p), for plotting Φ(x) against p.
    """
    from scipy import optimize

    nn, kglm, labels = _paired_logits(nn_logits, kglm_logits, y)
    n_points, n_columns = nn.shape
    if outputs == "paper":
        if n_columns == 1:
            x_pairs, nn_logit_pairs = kglm[:, 0], nn[:, 0]
            point_of_pair = np.arange(n_points)
            output_of_pair = np.ones(n_points, dtype=np.int64)
        else:
            point_of_pair = np.repeat(np.arange(n_points), n_columns)
            class_of_pair = np.tile(np.arange(n_columns), n_points)
            output_of_pair = class_of_pair
            x_pairs = kglm.ravel()
            nn_logit_pairs = true_class_logit(nn[point_of_pair], class_of_pair)
    elif outputs == "true_class":
        point_of_pair = np.arange(n_points)
        output_of_pair = labels
        nn_logit_pairs = true_class_logit(nn, labels)
        if n_columns == 1:
            x_pairs = np.where(labels == 1, kglm[:, 0], -kglm[:, 0])
        else:
            x_pairs = kglm[np.arange(n_points), labels]
    else:
        raise ValueError(f"outputs must be 'paper' or 'true_class', got {outputs!r}")

    # p within eps of 0 or 1  ⇔  |logit p| > logit(1 − eps).
    keep = np.abs(nn_logit_pairs) <= special.logit(1.0 - eps)
    result: dict[str, Any] = {"n_masked": int(np.sum(~keep))}
    is_fit_point = np.zeros(n_points, dtype=bool)
    order = np.random.default_rng(seed).permutation(n_points)
    is_fit_point[order[: n_points // 2]] = True
    fit_pairs = keep & is_fit_point[point_of_pair]
    eval_pairs = keep & ~is_fit_point[point_of_pair]
    result["n_fit"], result["n_eval"] = int(fit_pairs.sum()), int(eval_pairs.sum())
    if return_pairs:
        result["eval_pairs"] = {"point": point_of_pair[eval_pairs], "output": output_of_pair[eval_pairs],
                                "kglm_logit": x_pairs[eval_pairs], "nn_logit": nn_logit_pairs[eval_pairs]}

    x_fit, x_eval = x_pairs[fit_pairs], x_pairs[eval_pairs]
    logit_fit, logit_eval = nn_logit_pairs[fit_pairs], nn_logit_pairs[eval_pairs]
    prob_fit = special.expit(logit_fit)

    guesses = _initial_guesses(x_fit, logit_fit) if x_fit.size >= 2 else {}
    for name, phi in REALISATION_FUNCTIONS.items():
        n_params = 2 if name == "linear" else 4
        result[f"r2_{name}"], result[f"params_{name}"] = math.nan, None
        if x_fit.size <= n_params or x_eval.size < 2:
            continue
        try:
            with warnings.catch_warnings():
                # A singular covariance only means the parameters are not unique.
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                with np.errstate(over="ignore", invalid="ignore"):
                    params, _ = optimize.curve_fit(phi, x_fit, prob_fit, p0=guesses[name],
                                                   maxfev=maxfev)
        except (RuntimeError, ValueError):
            continue  # Did not converge: the paper inspects such cases visually; we report NaN.
        predicted = np.clip(phi(x_eval, *params), eps, 1.0 - eps)
        if not np.all(np.isfinite(predicted)):
            continue
        result[f"r2_{name}"] = _r2(logit_eval, special.logit(predicted))
        result[f"params_{name}"] = [float(p) for p in params]
    return result


# --------------------------------------------------------------------------------------
# Forensics and aggregation
# --------------------------------------------------------------------------------------


def precision_recall(flags: ArrayLike, truth: ArrayLike) -> tuple[float, float]:
    """Precision TP/(TP+FP) and recall TP/(TP+FN) of boolean ``flags`` against ``truth``.

    Zero-division conventions: precision is NaN when nothing is flagged (TP+FP = 0) and
    recall is NaN when nothing is truly positive (TP+FN = 0) — undefined rather than a
    silently optimistic 0 or 1. Both in [0, 1] (multiply by 100 for the paper's percent).
    """
    flag_arr, truth_arr = np.asarray(flags), np.asarray(truth)
    if flag_arr.shape != truth_arr.shape or flag_arr.ndim != 1:
        raise ValueError(
            f"flags {flag_arr.shape} and truth {truth_arr.shape} must be 1-D arrays of equal length"
        )
    for name, arr in (("flags", flag_arr), ("truth", truth_arr)):
        if arr.size and not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must be boolean (or 0/1)")
    flag_arr, truth_arr = flag_arr.astype(bool), truth_arr.astype(bool)
    true_pos = int(np.sum(flag_arr & truth_arr))
    n_flagged, n_positive = int(np.sum(flag_arr)), int(np.sum(truth_arr))
    precision = true_pos / n_flagged if n_flagged else math.nan
    recall = true_pos / n_positive if n_positive else math.nan
    return precision, recall


def mean_sem(values: ArrayLike) -> tuple[float, float]:
    """Mean and standard error of the mean ``std(ddof=1)/sqrt(n)``, ignoring NaNs.

    ``n`` counts the non-NaN values. Mean is NaN for ``n == 0``; SEM is NaN for ``n < 2``.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    n = arr.size
    if n == 0:
        return math.nan, math.nan
    mean = float(arr.mean())
    if n < 2:
        return mean, math.nan
    return mean, float(arr.std(ddof=1) / math.sqrt(n))


def faithfulness(
    nn_logits: ArrayLike, kglm_logits: ArrayLike, y: ArrayLike, seed: int = 0
) -> dict[str, float | int]:
    """All faithfulness metrics of one (network, surrogate) pair on one test set.

    Keys (:data:`FAITHFULNESS_KEYS`): ``nn_test_acc``, ``kglm_test_acc`` (percent),
    ``tad`` (percent points), ``tau`` (the reference τ_K, :func:`kendall_tau`),
    ``tau_true_class`` (:func:`kendall_tau_true_class`), ``tau_n_used`` (int: test points
    ``tau`` ranked — fewer than the test set for binary networks whose float32 probability
    saturates to 0 or 1), ``r_miss``, ``pearson``, ``spearman`` (both on true-class
    log-probabilities), ``r2_linear``, ``r2_logistic``, ``r2_arctan`` (appendix L, random half
    split from ``seed``).
    """
    nn, kglm, labels = _paired_logits(nn_logits, kglm_logits, y)
    nn_acc, kglm_acc = accuracy(nn, labels), accuracy(kglm, labels)
    realisation = linear_realisation(kglm, nn, labels, seed=seed)
    tau_nn, tau_kglm = reference_tau_pair(nn, kglm, labels)
    return {
        "nn_test_acc": nn_acc * 100.0,
        "kglm_test_acc": kglm_acc * 100.0,
        "tad": (kglm_acc - nn_acc) * 100.0,
        "tau": _kendall(tau_nn, tau_kglm),
        "tau_true_class": kendall_tau_true_class(nn, kglm, labels),
        "tau_n_used": int(tau_nn.size),
        "r_miss": misclassification_coincidence(nn, kglm, labels),
        "pearson": pearson(nn, kglm, labels),
        "spearman": spearman(nn, kglm, labels),
        "r2_linear": realisation["r2_linear"],
        "r2_logistic": realisation["r2_logistic"],
        "r2_arctan": realisation["r2_arctan"],
    }
