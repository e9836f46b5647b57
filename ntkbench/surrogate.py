"""Kernel generalised linear model (kGLM) surrogate and its data attribution (paper 001, §2).

``kGLM(x) = W κ(x, X) + b``: a linear model whose features are the kernel values between
``x`` and the ``N`` training points. Because the model is linear in the kernel row, each
training point's share of a logit is explicit (eq. 3):
``A(x, x_i)^c = W_{c,i} κ(x, x_i) + b_c / N`` and ``Σ_i A(x, x_i)^c = kGLM(x)^c``.

Two solvers of the same L2-regularised log-loss objective (``solver``)::

    E(W, b) = (1/N) Σ_i s_i · logloss(y_i, W κ(x_i, X) + b) + (alpha/2) ‖W‖²_F

with ``s_i`` the class weight of ``y_i`` (``"balanced"``: ``N / (n_classes · n_{y_i})``)
times the sample weight; the intercept is not penalised.

* ``"sgd"``: ``sklearn.linear_model.SGDClassifier(loss="log_loss", penalty="l2")``, as in the
  paper's original code. Multi-class problems are fitted one-vs-rest; the ``C`` scores are
  used as the kGLM logits and turned into probabilities with a softmax, as the paper does.
  :data:`PAPER_SGD_SETTINGS` / :meth:`KernelGLM.paper_settings` are the original code's exact
  settings (sklearn's defaults: ``tol=1e-3``, ``max_iter=1000``, last iterate).
* ``"lbfgs"``: the exact minimiser of ``E`` by L-BFGS in float64, deterministic (no seed):
  binary (one logit) for two classes and multinomial (softmax) for ``C ≥ 3`` — the same
  optimum as ``sklearn.linear_model.LogisticRegression(C=1/(alpha·N), class_weight=...)``.
  For ``C ≥ 3`` this is the multinomial objective, not SGD's one-vs-rest one.

Logit convention (the same as the network's, see :mod:`ntkbench.metrics`): a binary problem
gives ``(M, 1)`` logits of class 1 (sigmoid), ``C ≥ 3`` classes give ``(M, C)`` logits
(softmax).

Targets: :meth:`KernelGLM.fit` takes whatever labels it is given. The paper's default is the
true training labels; to fit a "student" of the network (appendix I) pass the network's
predicted labels on the training set instead — that choice belongs to the caller.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import ThreadpoolController

from ntkbench.config import DEFAULT_VARIANT, kglm_variants  # re-exported: the settings live with the config
from ntkbench.metrics import predicted_labels, true_class_log_prob

__all__ = ["KernelGLM", "SOLVERS", "PAPER_SGD_SETTINGS", "DEFAULT_VARIANT", "kglm_objective",
           "kglm_variants"]

#: kGLM solvers (config ``kglm.solver``).
SOLVERS = ("sgd", "lbfgs")

#: The original code's SGDClassifier settings beyond loss/penalty/alpha/class_weight: sklearn's
#: defaults (``SGDClassifier(loss="log_loss", penalty="l2", alpha=1e-4,
#: class_weight="balanced")``): at most 1000 epochs, stop when the loss has not improved by
#: ``tol`` for 5 epochs (``n_iter_no_change``, the constructor's default), the last iterate
#: (no averaging), the "optimal" learning rate. As config values: ``kglm: {solver: sgd,
#: max_iter: 1000, tol: 1.0e-3, average: false, learning_rate: optimal}``.
PAPER_SGD_SETTINGS: dict[str, Any] = {
    "solver": "sgd", "max_iter": 1000, "tol": 1e-3, "average": False, "learning_rate": "optimal",
}

#: Name of the kGLM a config ``kglm`` block describes without any variant override.


# L-BFGS stopping rule (:func:`_lbfgs`): the largest gradient component of E below LBFGS_GTOL,
# or no relative decrease of E above LBFGS_FTOL; at most LBFGS_MAX_ITER iterations (a warning
# otherwise).
LBFGS_GTOL = 1e-9
LBFGS_FTOL = 1e-15
LBFGS_MAX_ITER = 20000


def _as_kernel(kernel: ArrayLike, name: str) -> NDArray[np.float64]:
    """A finite 2-D float64 C-contiguous kernel block (SGDClassifier would copy it anyway)."""
    array = np.ascontiguousarray(kernel, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D kernel matrix, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def kglm_objective(
    features: NDArray[np.float64], labels: NDArray[np.int64], weights: NDArray[np.float64],
    alpha: float, coef: NDArray[np.float64], intercept: NDArray[np.float64],
) -> tuple[float, NDArray[np.float64]]:
    """``E(W, b)`` of both solvers and its gradient ``[∂E/∂W | ∂E/∂b]`` (shape ``(C_out, N + 1)``).

    ``E = (1/N) Σ_i s_i ℓ_i + (alpha/2) ‖W‖²`` with ``s_i = weights[i]``; ``ℓ_i`` is the
    binary log-loss of the class-1 logit when ``coef`` has one row, else the softmax
    cross-entropy. ``N`` is the number of rows of ``features`` (SGDClassifier's and
    ``LogisticRegression(C=1/(alpha·N))``'s normalisation). float64 throughout.
    """
    n_samples = features.shape[0]
    logits = features @ coef.T + intercept
    if coef.shape[0] == 1:
        z = logits[:, 0]
        target = labels.astype(np.float64)
        losses = np.logaddexp(0.0, z) - target * z
        residual = (weights * (special.expit(z) - target) / n_samples)[:, None]
    else:
        log_p = special.log_softmax(logits, axis=1)
        rows = np.arange(n_samples)
        losses = -log_p[rows, labels]
        residual = np.exp(log_p)
        residual[rows, labels] -= 1.0
        residual *= (weights / n_samples)[:, None]
    value = float(np.dot(weights, losses) / n_samples + 0.5 * alpha * np.sum(coef * coef))
    grad_coef = (features.T @ residual).T + alpha * coef
    grad_intercept = residual.sum(axis=0)
    return value, np.concatenate([grad_coef, grad_intercept[:, None]], axis=1)


def _lbfgs(fun: Any, x0: NDArray[np.float64], memory: int = 20
           ) -> tuple[NDArray[np.float64], int, float, bool]:
    """Minimise a smooth convex ``fun(x) -> (value, gradient)`` by L-BFGS (two-loop recursion,
    strong-Wolfe line search), deterministic.

    Stops when the largest gradient component is at most :data:`LBFGS_GTOL`, or when an
    iteration lowers the value by at most :data:`LBFGS_FTOL` relative (the float64 precision
    limit), or after :data:`LBFGS_MAX_ITER` iterations. Returns ``(x, iterations,
    largest gradient component, converged)``; ``converged`` is False only when the iteration
    budget ran out. (scipy's L-BFGS-B spends ~0.1 s per iteration on its own bookkeeping for
    10⁴ variables, more than the kernel products here, hence this small implementation.)
    """
    # The vector bookkeeping runs with one BLAS thread: multi-threaded dot products of 10⁴
    # entries take milliseconds instead of microseconds when the cores are busy. The kernel
    # products in `fun` keep the BLAS's own thread count.
    controller = _blas_controller()
    blas_threads = max([i["num_threads"] for i in controller.info() if i["user_api"] == "blas"],
                       default=1)
    cache: dict[str, Any] = {}

    def evaluate(x: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        if cache.get("x") is None or not np.array_equal(cache["x"], x):
            with controller.limit(limits=blas_threads, user_api="blas"):
                value, grad = fun(x)
            cache.update(x=x.copy(), value=value, grad=grad)
        return cache["value"], cache["grad"]

    with controller.limit(limits=1, user_api="blas"):
        return _lbfgs_loop(evaluate, np.array(x0, dtype=np.float64), memory)


_CONTROLLER: ThreadpoolController | None = None


def _blas_controller() -> ThreadpoolController:
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _lbfgs_loop(evaluate: Any, x: NDArray[np.float64], memory: int
                ) -> tuple[NDArray[np.float64], int, float, bool]:
    """The iterations of :func:`_lbfgs`; ``evaluate`` caches its last point."""
    value, grad = evaluate(x)
    pairs: list[tuple[NDArray[np.float64], NDArray[np.float64], float]] = []
    previous_value = None
    for iteration in range(LBFGS_MAX_ITER):
        grad_max = float(np.max(np.abs(grad)))
        if grad_max <= LBFGS_GTOL:
            return x, iteration, grad_max, True
        # Two-loop recursion: direction = −H·grad with the last `memory` curvature pairs.
        q = grad.copy()
        coefficients = []
        for s_k, y_k, rho in reversed(pairs):
            a = rho * float(s_k @ q)
            q -= a * y_k
            coefficients.append(a)
        if pairs:
            s_k, y_k, _ = pairs[-1]
            q *= float(s_k @ y_k) / float(y_k @ y_k)
        else:
            q /= max(1.0, float(np.linalg.norm(grad)))
        for (s_k, y_k, rho), a in zip(pairs, reversed(coefficients)):
            q += (a - rho * float(y_k @ q)) * s_k
        direction = -q
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (rounding): restart from steepest descent
            pairs.clear()
            direction = -grad / max(1.0, float(np.linalg.norm(grad)))
            slope = float(grad @ direction)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scipy's LineSearchWarning: handled below
            step, *_ = optimize.line_search(
                lambda z: evaluate(z)[0], lambda z: evaluate(z)[1], x, direction, grad, value,
                previous_value, c1=1e-4, c2=0.9, maxiter=50)
        if step is None:
            if pairs:  # retry once without the curvature memory
                pairs.clear()
                continue
            return x, iteration, grad_max, True  # no further decrease possible in float64
        new_x = x + step * direction
        new_value, new_grad = evaluate(new_x)
        s_k, y_k = new_x - x, new_grad - grad
        curvature = float(s_k @ y_k)
        if curvature > 1e-12 * float(y_k @ y_k):
            pairs.append((s_k, y_k, 1.0 / curvature))
            if len(pairs) > memory:
                pairs.pop(0)
        decrease = value - new_value
        previous_value, x, value, grad = value, new_x, new_value, new_grad
        if 0 <= decrease <= LBFGS_FTOL * max(abs(value), abs(previous_value), 1.0):
            return x, iteration + 1, float(np.max(np.abs(grad))), True
    return x, LBFGS_MAX_ITER, float(np.max(np.abs(grad))), False


class KernelGLM(ClassifierMixin, BaseEstimator):
    """kGLM surrogate fitted on precomputed kernels, scikit-learn estimator style.

    ``fit(K_train, y)`` with the train×train kernel ``(N, N)``; every other method takes a
    kernel block between some points and the same ``N`` training points, ``(M, N)``.

    Args:
        alpha: L2 strength (objective ``mean weighted log-loss + alpha/2 ‖W‖²``, both solvers).
            Original code: 1e-4 for small models and ResNet18, 1e-2 for BERT and the poisoned CNN.
        class_weight: ``"balanced"`` (paper), ``None``, or a dict ``{class: weight}``.
        solver: ``"sgd"`` (SGDClassifier, the paper's) or ``"lbfgs"`` (the exact optimum of the
            same objective, multinomial for ``C ≥ 3``; deterministic). The constructor keeps
            ``"sgd"`` for library callers; the workflow's default is the schema's
            (``kglm.solver``). The options ``max_iter``, ``tol``, ``average``,
            ``learning_rate``, ``eta0``, ``power_t``, ``n_iter_no_change``, ``seed`` and
            ``n_jobs`` belong to SGD and are ignored by ``"lbfgs"``, which runs to a gradient
            below ``LBFGS_GTOL`` (see :meth:`describe`).
        max_iter: Epochs over the training set. With ``tol=None`` every epoch runs, which the
            averaging schedule below relies on.
        tol: SGDClassifier's stopping tolerance. ``None`` (default) runs all ``max_iter``
            epochs; the original code used sklearn's default 1e-3, which stops after a few
            noisy epochs.
        average: Iterate averaging, as the fraction of the ``max_iter`` epochs at the end over
            which the weights are averaged: ``0.5`` (default) averages the second half (tail
            averaging), ``True``/``1.0`` averages from the first step (sklearn's
            ``average=True``), ``False``/``0.0`` returns the last iterate (the original code).
        learning_rate: Passed to SGDClassifier (default: its ``"optimal"`` schedule
            ``1/(alpha (t + t0))``).
        eta0: Passed to SGDClassifier (unused by the default ``"optimal"`` schedule).
        power_t: Passed to SGDClassifier (unused by the default ``"optimal"`` schedule).
        n_iter_no_change: Passed to SGDClassifier (used only with a ``tol``).
        kernel_scale: ``None`` (default) fits on the kernel as given. A number ``s`` fits on
            ``K / s``; ``"auto"`` uses the root-mean-square of the train×train diagonal. The
            fitted weights are divided by ``s`` again, so :meth:`decision_function` and
            :meth:`attribution` take the unscaled kernel. Useful for unnormalised kernels
            (``trntk0``, ``pntk0``) whose large values make SGD steps blow up — at the price
            of an effective ``alpha`` that differs from the paper's by ``s²``.
        n_classes: Expected number of classes (2 for binary). When given, ``fit`` checks that
            every class ``0..n_classes-1`` occurs in ``y`` and names the missing ones
            otherwise.
        seed: ``random_state`` of SGDClassifier (sample order); the fit is deterministic given
            it.
        n_jobs: Parallel one-vs-rest fits (multi-class only).

    Why these defaults: SGD on a kernel's highly correlated features with a small ``alpha``
    converges slowly, and the last iterate of the original settings (``tol=1e-3``, no
    averaging) changes a lot with the seed — on sklearn digits with a cosine kernel, τ
    between the true-class log-probabilities of two seeds' fits was 0.47 (10 classes) and
    0.67 (3 vs 8). Running a fixed 300 epochs and averaging the second half gives
    0.98/0.98 and the accuracy of the exact optimum of the same objective; averaging from
    the first step is as reproducible but biased towards early, poor iterates.
    See :meth:`paper_settings` for the original configuration.

    Attributes:
        coef_ (ndarray): ``W``, shape ``(C_out, N)``, in units of the unscaled kernel.
            ``C_out = 1`` for binary problems.
        intercept_ (ndarray): ``b``, shape ``(C_out,)``.
        classes_ (ndarray): ``0..n_classes-1``.
        n_features_in_ (int): ``N``, the number of training points (kernel columns).
        n_iter_ (int): Epochs run (max over one-vs-rest problems).
        kernel_scale_ (float): Scale actually divided out during fitting (1.0 when
            ``kernel_scale`` is None).
        sgd_ (SGDClassifier): The fitted sklearn estimator (on the scaled kernel);
            ``solver="sgd"`` only.
        objective_ (float): ``E(W, b)`` at the returned weights (both solvers), on the kernel
            passed to ``fit`` (scaled by ``kernel_scale_``), so SGD's distance from the optimum
            can be read off.
        grad_max_ (float): Largest absolute component of the gradient of ``E`` at the returned
            weights.
        converged_ (bool): L-BFGS met its tolerance / SGD stopped before ``max_iter`` (always
            False with ``tol=None``, which runs every epoch by design).
    """

    def __init__(
        self,
        alpha: float = 1e-4,
        class_weight: Literal["balanced"] | dict[int, float] | None = "balanced",
        solver: Literal["sgd", "lbfgs"] = "sgd",
        max_iter: int = 300,
        tol: float | None = None,
        average: bool | float = 0.5,
        learning_rate: str = "optimal",
        eta0: float = 0.01,
        power_t: float = 0.5,
        n_iter_no_change: int = 5,
        kernel_scale: float | Literal["auto"] | None = None,
        n_classes: int | None = None,
        seed: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.alpha = alpha
        self.class_weight = class_weight
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.average = average
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.n_iter_no_change = n_iter_no_change
        self.kernel_scale = kernel_scale
        self.n_classes = n_classes
        self.seed = seed
        self.n_jobs = n_jobs

    @classmethod
    def paper_settings(cls, alpha: float = 1e-4, seed: int = 0) -> "KernelGLM":
        """The original code's configuration (:data:`PAPER_SGD_SETTINGS`): SGDClassifier with
        sklearn's defaults (``max_iter=1000``, ``tol=1e-3``, no averaging),
        ``class_weight="balanced"``."""
        return cls(alpha=alpha, class_weight="balanced", seed=seed, **PAPER_SGD_SETTINGS)

    @classmethod
    def from_config(cls, kglm_cfg: dict[str, Any], **overrides: Any) -> "KernelGLM":
        """An unfitted kGLM from a validated config ``kglm`` block (or one entry of
        :func:`kglm_variants`).

        ``target`` (which labels to fit: a choice of the caller) and ``variants`` (further
        kGLMs, see :func:`kglm_variants`) are left out; every other key is a constructor
        argument, so an unknown key is an error. Keys the schema gives no default for fall
        back to the constructor's defaults. ``overrides`` win over the block.
        """
        params = {k: v for k, v in kglm_cfg.items() if k not in ("target", "variants")}
        params.update(overrides)
        return cls(**params)

    @classmethod
    def from_weights(cls, coef: ArrayLike, intercept: ArrayLike) -> "KernelGLM":
        """A kGLM with stored weights ``W = coef`` ``(C_out, N)`` and ``b = intercept``
        ``(C_out,)`` (in units of the unscaled kernel, as :meth:`fit` leaves ``coef_``): the
        surrogate stage saves them, so later stages predict and attribute with the very fit
        (:meth:`decision_function`, :meth:`attribution`) without refitting. ``C_out = 1`` is a
        binary kGLM. Only the prediction and attribution methods are meaningful on it."""
        weights = np.array(coef, dtype=np.float64)
        bias = np.array(intercept, dtype=np.float64)
        if weights.ndim != 2 or bias.shape != (weights.shape[0],) or weights.shape[0] < 1:
            raise ValueError(f"coef must be (C_out, N) and intercept (C_out,), got {weights.shape} and {bias.shape}")
        if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(bias))):
            raise ValueError("coef and intercept must be finite")
        glm = cls()
        glm.coef_, glm.intercept_ = weights, bias
        glm.n_features_in_ = weights.shape[1]
        glm.classes_ = np.arange(2 if weights.shape[0] == 1 else weights.shape[0])
        return glm

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the fit that produced the numbers: solver, alpha,
        class_weight, kernel scale and the solver's own settings and convergence.

        Before ``fit`` only the settings are given."""
        info: dict[str, Any] = {"solver": self.solver, "alpha": float(self.alpha),
                                "class_weight": self.class_weight}
        if self.solver == "sgd":
            info.update(max_iter=self.max_iter, tol=self.tol, average=self.average,
                        learning_rate=self.learning_rate, seed=self.seed)
            if self.learning_rate != "optimal":
                info.update(eta0=self.eta0, power_t=self.power_t)
            if self.tol is not None:
                info["n_iter_no_change"] = self.n_iter_no_change
        else:
            info.update(gtol=LBFGS_GTOL, ftol=LBFGS_FTOL, max_iter=LBFGS_MAX_ITER)
        info["kernel_scale"] = self.kernel_scale
        if hasattr(self, "coef_"):
            info.update(kernel_scale_used=float(self.kernel_scale_), n_iter=int(self.n_iter_),
                        converged=bool(self.converged_), objective=float(self.objective_),
                        grad_max=float(self.grad_max_))
        return info

    # ------------------------------------------------------------------ fitting

    def _sklearn_average(self, n_samples: int) -> bool | int:
        """Translate the ``average`` fraction into SGDClassifier's ``average`` argument,
        which is either a bool or the number of samples seen before averaging starts."""
        fraction = self.average
        if isinstance(fraction, (bool, np.bool_)):
            return bool(fraction)
        if not isinstance(fraction, numbers.Real) or not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"average must be a bool or a fraction in [0, 1], got {fraction!r}")
        if fraction == 0.0:
            return False
        start_epoch = int(round((1.0 - float(fraction)) * self.max_iter))
        start_sample = start_epoch * n_samples
        # sklearn reads average=1 as True; both mean "from the first step".
        return True if start_sample <= 1 else start_sample

    def _resolve_scale(self, kernel_train: NDArray[np.float64]) -> float:
        if self.kernel_scale is None:
            return 1.0
        if isinstance(self.kernel_scale, str):
            if self.kernel_scale != "auto":
                raise ValueError(f"kernel_scale must be None, 'auto' or a positive number, "
                                 f"got {self.kernel_scale!r}")
            n = min(kernel_train.shape)
            diagonal = kernel_train[np.arange(n), np.arange(n)]
            scale = float(np.sqrt(np.mean(diagonal**2)))
            if not scale > 0:
                raise ValueError("kernel_scale='auto': the train×train kernel diagonal is all zero")
            return scale
        scale = float(self.kernel_scale)
        if not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"kernel_scale must be positive and finite, got {self.kernel_scale!r}")
        return scale

    def fit(self, K_train: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
            ) -> "KernelGLM":
        """Fit ``W, b`` on the train×train kernel ``K_train`` (N, N) and labels ``y`` (N,).

        ``y`` must hold integer classes ``0..C-1``, each present at least once. Pass the
        network's predicted training labels instead of the true ones for a teacher-student
        surrogate (paper appendix I).
        """
        kernel = _as_kernel(K_train, "K_train")
        labels = np.asarray(y)
        if labels.ndim != 1:
            raise ValueError(f"y must be a 1-D label array, got shape {labels.shape}")
        if kernel.shape[0] != labels.shape[0]:
            raise ValueError(
                f"K_train has {kernel.shape[0]} rows but y has {labels.shape[0]} labels; "
                "pass the train×train kernel (N, N) with one label per training point"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            if not np.all(labels == np.round(labels)):
                raise ValueError(f"y must hold integer class labels, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.size == 0 or labels.min() < 0:
            raise ValueError("y must be non-empty with classes 0..C-1")
        n_classes = int(labels.max()) + 1 if self.n_classes is None else int(self.n_classes)
        missing = sorted(set(range(n_classes)) - set(np.unique(labels).tolist()))
        if labels.max() >= n_classes:
            raise ValueError(f"y has class {labels.max()} but n_classes={n_classes}")
        if missing:
            raise ValueError(
                f"y lacks class(es) {missing} of 0..{n_classes - 1}; the kGLM needs at least "
                "one training example of every class to give it a logit column"
            )
        if n_classes < 2:
            raise ValueError("y has a single class; a classifier needs at least two")

        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        alpha = float(self.alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be positive and finite, got {self.alpha!r}")
        if self.solver == "sgd" and not (isinstance(self.max_iter, numbers.Integral)
                                         and self.max_iter >= 1):
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")

        scale = self._resolve_scale(kernel)
        features = kernel / scale if scale != 1.0 else kernel
        weights = self._sample_weights(labels, n_classes, sample_weight)
        if self.solver == "sgd":
            coef, intercept = self._fit_sgd(features, labels, sample_weight)
        else:
            coef, intercept = self._fit_lbfgs(features, labels, n_classes, weights)

        self.kernel_scale_ = scale
        self.classes_ = np.arange(n_classes)
        self.n_features_in_ = kernel.shape[1]
        if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(intercept))):
            raise FloatingPointError(
                f"{self.solver} fit diverged (non-finite weights); lower the learning rate or pass "
                "kernel_scale='auto' for an unnormalised kernel"
            )
        self.objective_, grad = kglm_objective(features, labels, weights, alpha, coef, intercept)
        self.grad_max_ = float(np.max(np.abs(grad)))
        self.coef_ = coef / scale
        self.intercept_ = intercept
        return self

    def _sample_weights(self, labels: NDArray[np.int64], n_classes: int,
                        sample_weight: ArrayLike | None) -> NDArray[np.float64]:
        """``s_i``: class weight of ``y_i`` times the sample weight (sklearn's semantics)."""
        if self.class_weight is None:
            per_class = np.ones(n_classes)
        elif isinstance(self.class_weight, str):
            if self.class_weight != "balanced":
                raise ValueError(f"class_weight must be 'balanced', None or a dict, "
                                 f"got {self.class_weight!r}")
            per_class = compute_class_weight("balanced", classes=np.arange(n_classes), y=labels)
        else:
            per_class = np.array([float(self.class_weight.get(c, 1.0)) for c in range(n_classes)])
        weights = per_class[labels].astype(np.float64)
        if sample_weight is not None:
            extra = np.asarray(sample_weight, dtype=np.float64)
            if extra.shape != labels.shape:
                raise ValueError(f"sample_weight must have shape {labels.shape}, got {extra.shape}")
            weights = weights * extra
        return weights

    def _fit_sgd(self, features: NDArray[np.float64], labels: NDArray[np.int64],
                 sample_weight: ArrayLike | None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        sgd = SGDClassifier(
            loss="log_loss",
            penalty="l2",
            alpha=self.alpha,
            class_weight=self.class_weight,
            max_iter=self.max_iter,
            tol=self.tol,
            average=self._sklearn_average(features.shape[0]),
            learning_rate=self.learning_rate,
            eta0=self.eta0,
            power_t=self.power_t,
            n_iter_no_change=self.n_iter_no_change,
            shuffle=True,
            random_state=self.seed,
            n_jobs=self.n_jobs,
        )
        with warnings.catch_warnings():
            # With tol set, hitting max_iter is the expected outcome of a fixed budget.
            warnings.simplefilter("ignore", ConvergenceWarning)
            sgd.fit(features, labels, sample_weight=sample_weight)
        self.sgd_ = sgd
        self.n_iter_ = int(np.max(sgd.n_iter_))
        self.converged_ = self.tol is not None and self.n_iter_ < self.max_iter
        return (np.asarray(sgd.coef_, dtype=np.float64).copy(),
                np.asarray(sgd.intercept_, dtype=np.float64).copy())

    def _fit_lbfgs(self, features: NDArray[np.float64], labels: NDArray[np.int64], n_classes: int,
                   weights: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Minimise :func:`kglm_objective` from zero weights with scipy's L-BFGS-B."""
        n_out = 1 if n_classes == 2 else n_classes
        n_feat = features.shape[1]
        alpha = float(self.alpha)

        # Optimise over (W, b' = b + W μ) with μ the column means of the features: the same
        # objective (b is not penalised, so this is a bijection that leaves E unchanged), but
        # the large common component of the kernel rows no longer couples W with b, which
        # would otherwise make L-BFGS crawl.
        mu = features.mean(axis=0)

        def unpack(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
            coef = x[: n_out * n_feat].reshape(n_out, n_feat)
            return coef, x[n_out * n_feat:] - coef @ mu

        def fun(x: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
            coef, intercept = unpack(x)
            value, grad = kglm_objective(features, labels, weights, alpha, coef, intercept)
            grad_coef = grad[:, :-1] - np.outer(grad[:, -1], mu)  # chain rule through b
            return value, np.concatenate([grad_coef.ravel(), grad[:, -1]])  # x's layout

        x, n_iter, grad_max, converged = _lbfgs(fun, np.zeros(n_out * (n_feat + 1)))
        self.n_iter_ = n_iter
        self.converged_ = converged
        if not converged:
            warnings.warn(f"kGLM L-BFGS stopped after {n_iter} iterations with a largest gradient "
                          f"component of {grad_max:.2e} (tolerance {LBFGS_GTOL:g})",
                          ConvergenceWarning, stacklevel=3)
        coef, intercept = unpack(x)
        return coef.copy(), intercept.copy()

    # ------------------------------------------------------------------ prediction

    def _check_kernel(self, K: ArrayLike) -> NDArray[np.float64]:
        check_is_fitted(self, "coef_")
        kernel = _as_kernel(K, "K")
        if kernel.shape[1] != self.n_features_in_:
            raise ValueError(
                f"K has {kernel.shape[1]} columns but the kGLM was fitted on "
                f"{self.n_features_in_} training points; pass the kernel between the "
                f"evaluation points and the training points, shape (M, {self.n_features_in_})"
            )
        return kernel

    def decision_function(self, K: ArrayLike) -> NDArray[np.float64]:
        """kGLM logits ``K W^T + b``, float64, ``(M, 1)`` for binary, ``(M, C)`` otherwise."""
        kernel = self._check_kernel(K)
        return kernel @ self.coef_.T + self.intercept_

    def predict(self, K: ArrayLike) -> NDArray[np.int64]:
        """Predicted classes (M,): ``logit > 0`` for binary, argmax otherwise."""
        return predicted_labels(self.decision_function(K))

    def predict_log_proba(self, K: ArrayLike) -> NDArray[np.float64]:
        """Log class probabilities ``(M, n_classes)``: log-sigmoid for binary, log-softmax
        of the one-vs-rest scores otherwise (not sklearn's OvR-normalised probabilities)."""
        logits = self.decision_function(K)
        if logits.shape[1] == 1:
            z = logits[:, 0]
            return np.column_stack([special.log_expit(-z), special.log_expit(z)])
        return special.log_softmax(logits, axis=1)

    def predict_proba(self, K: ArrayLike) -> NDArray[np.float64]:
        """Class probabilities ``(M, n_classes)``, ``exp`` of :meth:`predict_log_proba`."""
        return np.exp(self.predict_log_proba(K))

    def log_proba_true_class(self, K: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Log-probability of class ``y[m]`` for every row (M,), float64."""
        return true_class_log_prob(self.decision_function(K), y)

    # ------------------------------------------------------------------ attribution

    def attribution(self, K: ArrayLike, target: int | ArrayLike | None = None
                    ) -> NDArray[np.float64]:
        """Per-training-point attribution ``A(x_m, x_i)^c = W_{c,i} K[m, i] + b_c / N`` (eq. 3).

        ``target=None`` gives every logit column, shape ``(M, N, C_out)``; an int ``c``
        gives column ``c`` only, ``(M, N)``; an int array of shape ``(M,)`` gives, for each
        row, its own column (e.g. the predicted or true class), ``(M, N)``. For a binary kGLM
        the only column is class 1's logit (``c = 0``).

        ``attribution(K).sum(axis=1)`` equals ``decision_function(K)`` up to float rounding.
        Memory is ``M · N · C_out`` float64 values: pass a target or a slice of rows for
        large problems.
        """
        kernel = self._check_kernel(K)
        n_train = self.n_features_in_
        bias_share = self.intercept_ / n_train
        if target is None:
            return kernel[:, :, None] * self.coef_.T[None, :, :] + bias_share
        n_out = self.coef_.shape[0]
        target_arr = np.asarray(target)
        if target_arr.ndim == 0:
            column = int(target_arr)
            if not 0 <= column < n_out:
                raise ValueError(f"target {column} is not a logit column (0..{n_out - 1})")
            return kernel * self.coef_[column] + bias_share[column]
        if target_arr.shape != (kernel.shape[0],):
            raise ValueError(
                f"target must be None, an int, or one column per row of K (shape "
                f"({kernel.shape[0]},)), got shape {target_arr.shape}"
            )
        columns = target_arr.astype(np.int64)
        if columns.size and (columns.min() < 0 or columns.max() >= n_out):
            raise ValueError(f"target values must be logit columns 0..{n_out - 1}")
        return kernel * self.coef_[columns] + bias_share[columns][:, None]
