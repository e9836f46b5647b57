"""Kernel generalised linear model (kGLM) surrogate and its data attribution (paper 001, §2).

``kGLM(x) = W κ(x, X) + b``: a linear model whose features are the kernel values between
``x`` and the ``N`` training points, fitted with ``sklearn.linear_model.SGDClassifier``
(``loss="log_loss"``, ``penalty="l2"``), as in the paper's original code. Because the model
is linear in the kernel row, each training point's share of a logit is explicit
(eq. 3): ``A(x, x_i)^c = W_{c,i} κ(x, x_i) + b_c / N`` and ``Σ_i A(x, x_i)^c = kGLM(x)^c``.

Logit convention (the same as the network's, see :mod:`ntkbench.metrics`): a binary problem
gives ``(M, 1)`` logits of class 1 (sigmoid), ``C ≥ 3`` classes give ``(M, C)`` logits
(softmax). SGDClassifier fits multi-class problems one-vs-rest; its ``C`` scores are used as
the kGLM logits and turned into probabilities with a softmax, as the paper does.

Targets: :meth:`KernelGLM.fit` takes whatever labels it is given. The paper's default is the
true training labels; to fit a "student" of the network (appendix I) pass the network's
predicted labels on the training set instead — that choice belongs to the caller.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.utils.validation import check_is_fitted

from ntkbench.metrics import predicted_labels, true_class_log_prob

__all__ = ["KernelGLM"]


def _as_kernel(kernel: ArrayLike, name: str) -> NDArray[np.float64]:
    """A finite 2-D float64 C-contiguous kernel block (SGDClassifier would copy it anyway)."""
    array = np.ascontiguousarray(kernel, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D kernel matrix, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


class KernelGLM(ClassifierMixin, BaseEstimator):
    """kGLM surrogate fitted on precomputed kernels, scikit-learn estimator style.

    ``fit(K_train, y)`` with the train×train kernel ``(N, N)``; every other method takes a
    kernel block between some points and the same ``N`` training points, ``(M, N)``.

    Parameters
    ----------
    alpha:
        L2 strength of SGDClassifier (objective ``mean log-loss + alpha/2 ‖W‖²``).
        Original code: 1e-4 for small models and ResNet18, 1e-2 for BERT and the poisoned CNN.
    class_weight:
        ``"balanced"`` (paper), ``None``, or a dict ``{class: weight}``.
    max_iter:
        Epochs over the training set. With ``tol=None`` every epoch runs, which the
        averaging schedule below relies on.
    tol:
        SGDClassifier's stopping tolerance. ``None`` (default) runs all ``max_iter``
        epochs; the original code used sklearn's default 1e-3, which stops after a few
        noisy epochs.
    average:
        Iterate averaging, as the fraction of the ``max_iter`` epochs at the end over which
        the weights are averaged: ``0.5`` (default) averages the second half (tail
        averaging), ``True``/``1.0`` averages from the first step (sklearn's
        ``average=True``), ``False``/``0.0`` returns the last iterate (the original code).
    learning_rate, eta0, power_t, n_iter_no_change:
        Passed to SGDClassifier (defaults: its ``"optimal"`` schedule ``1/(alpha (t + t0))``).
    kernel_scale:
        ``None`` (default) fits on the kernel as given. A number ``s`` fits on ``K / s``;
        ``"auto"`` uses the root-mean-square of the train×train diagonal. The fitted
        weights are divided by ``s`` again, so :meth:`decision_function` and
        :meth:`attribution` take the unscaled kernel. Useful for unnormalised kernels
        (``trntk0``, ``pntk0``) whose large values make SGD steps blow up — at the price
        of an effective ``alpha`` that differs from the paper's by ``s²``.
    n_classes:
        Expected number of classes (2 for binary). When given, ``fit`` checks that every
        class ``0..n_classes-1`` occurs in ``y`` and names the missing ones otherwise.
    seed:
        ``random_state`` of SGDClassifier (sample order); the fit is deterministic given it.
    n_jobs:
        Parallel one-vs-rest fits (multi-class only).

    Why these defaults: SGD on a kernel's highly correlated features with a small ``alpha``
    converges slowly, and the last iterate of the original settings (``tol=1e-3``, no
    averaging) changes a lot with the seed — on sklearn digits with a cosine kernel, τ
    between the true-class log-probabilities of two seeds' fits was 0.47 (10 classes) and
    0.67 (3 vs 8). Running a fixed 300 epochs and averaging the second half gives
    0.98/0.98 and the accuracy of the exact optimum of the same objective; averaging from
    the first step is as reproducible but biased towards early, poor iterates.
    See :meth:`paper_settings` for the original configuration.

    Attributes
    ----------
    coef_ : ndarray (C_out, N)
        ``W``, in units of the unscaled kernel. ``C_out = 1`` for binary problems.
    intercept_ : ndarray (C_out,)
        ``b``.
    classes_ : ndarray
        ``0..n_classes-1``.
    n_features_in_ : int
        ``N``, the number of training points (kernel columns).
    n_iter_ : int
        Epochs run (max over one-vs-rest problems).
    kernel_scale_ : float
        Scale actually divided out during fitting (1.0 when ``kernel_scale`` is None).
    sgd_ : SGDClassifier
        The fitted sklearn estimator (on the scaled kernel).
    """

    def __init__(
        self,
        alpha: float = 1e-4,
        class_weight: Literal["balanced"] | dict[int, float] | None = "balanced",
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
        """The original code's configuration: SGDClassifier defaults (``max_iter=1000``,
        ``tol=1e-3``, no averaging), ``class_weight="balanced"``."""
        return cls(alpha=alpha, class_weight="balanced", max_iter=1000, tol=1e-3, average=False,
                   seed=seed)

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
        if not (isinstance(self.max_iter, numbers.Integral) and self.max_iter >= 1):
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")

        scale = self._resolve_scale(kernel)
        features = kernel / scale if scale != 1.0 else kernel
        sgd = SGDClassifier(
            loss="log_loss",
            penalty="l2",
            alpha=self.alpha,
            class_weight=self.class_weight,
            max_iter=self.max_iter,
            tol=self.tol,
            average=self._sklearn_average(kernel.shape[0]),
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
        self.kernel_scale_ = scale
        self.classes_ = np.arange(n_classes)
        self.n_features_in_ = kernel.shape[1]
        self.coef_ = np.asarray(sgd.coef_, dtype=np.float64) / scale
        self.intercept_ = np.asarray(sgd.intercept_, dtype=np.float64).copy()
        self.n_iter_ = int(np.max(sgd.n_iter_))
        if not (np.all(np.isfinite(self.coef_)) and np.all(np.isfinite(self.intercept_))):
            raise FloatingPointError(
                "SGD diverged (non-finite weights); lower the learning rate or pass "
                "kernel_scale='auto' for an unnormalised kernel"
            )
        return self

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
