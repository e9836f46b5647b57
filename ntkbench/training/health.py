"""Did training produce a usable network? Checks run after every training loop.

A diverged or dead network still has weights and logits, so everything downstream (kernels,
kGLM fits, faithfulness scores) happily produces numbers from it: with lr = 1e6 the weights
reach ~1e27, the outputs are constant, training accuracy sits at chance and the summary shows
tau = -1. :func:`check_training` looks for the signs of such a run and stops it with a
:class:`TrainingFailed` naming every problem found:

* the training loss is non-finite anywhere in the curve, or ends above ``max_loss_growth``
  times where it started (it blew up);
* a parameter (or floating buffer) is non-finite, or its largest magnitude exceeds
  ``max_abs_weight`` (nothing a healthy run reaches; diverged ones reach 1e19 to 1e27);
* the outputs on the training set are non-finite, exceed ``max_abs_output``, or are constant
  (every sample gets the same logits);
* training accuracy is at chance: not clearly better than always predicting the majority
  class (see :func:`chance_threshold`).

Pass ``allow_failure=True`` to keep such a run on purpose (the problems are then logged as a
warning and returned). The same function serves the toy tasks: a TMS model has only a loss
curve and weights; modular addition also has logits and labels.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ntkbench.utils import get_logger

log = get_logger(__name__)

__all__ = [
    "TrainingFailed",
    "check_training",
    "loss_problems",
    "weight_problems",
    "output_problems",
    "chance_threshold",
    "MAX_LOSS_GROWTH",
    "MAX_ABS_WEIGHT",
    "MAX_ABS_OUTPUT",
    "MIN_GAIN_OVER_CHANCE",
]

#: The final training loss may not exceed this multiple of the first recorded one.
MAX_LOSS_GROWTH = 10.0
#: Largest parameter magnitude a healthy network has (initialisations are O(1); diverged
#: runs reach 1e19 and beyond).
MAX_ABS_WEIGHT = 1e6
#: Largest logit magnitude on the training set a healthy network produces.
MAX_ABS_OUTPUT = 1e6
#: Share of the gap between the majority-class rate and perfect accuracy that training must
#: close to count as better than chance (0.05: 0.525 on a balanced binary task, 0.145 on ten
#: balanced classes).
MIN_GAIN_OVER_CHANCE = 0.05


class TrainingFailed(RuntimeError):
    """Training produced a diverged or dead network; ``problems`` lists what was found."""

    def __init__(self, message: str, problems: Sequence[str]):
        super().__init__(message)
        self.problems = list(problems)


def loss_problems(history: pd.DataFrame | None, column: str = "train_loss",
                  max_growth: float = MAX_LOSS_GROWTH) -> list[str]:
    """Problems of a loss curve: non-finite values, or a final loss above ``max_growth``×initial."""
    if history is None or len(history) == 0:
        return []
    if column not in history.columns:
        raise KeyError(f"training history has no column {column!r} (has {list(history.columns)})")
    loss = pd.to_numeric(history[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(loss)
    if bad.any():
        i = int(np.argmax(bad))
        at = next((f"{k} {history[k].iloc[i]}" for k in ("epoch", "step") if k in history.columns), f"record {i}")
        return [f"the {column} is non-finite (NaN/inf) in {int(bad.sum())} of {len(loss)} records, "
                f"first at {at}"]
    first, last = float(loss[0]), float(loss[-1])
    if first > 0 and last > max_growth * first:
        return [f"the {column} blew up: {last:.4g} at the end against {first:.4g} at the start "
                f"(more than {max_growth:g}x)"]
    return []


def weight_problems(model: nn.Module, max_abs: float = MAX_ABS_WEIGHT) -> list[str]:
    """Non-finite parameters / floating buffers, and parameters larger than ``max_abs``."""
    problems = []
    tensors = [(n, p, True) for n, p in model.named_parameters()]
    tensors += [(n, b, False) for n, b in model.named_buffers() if b.is_floating_point()]
    for name, t, is_param in tensors:
        t = t.detach()
        if t.numel() == 0:
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            problems.append(f"{'parameter' if is_param else 'buffer'} {name!r} has "
                            f"{int((~finite).sum())} non-finite value(s)")
        elif is_param:
            peak = float(t.abs().max())
            if peak > max_abs:
                problems.append(f"parameter {name!r} blew up: max |w| = {peak:.3g} > {max_abs:.3g}")
    return problems


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def chance_threshold(labels: Any, num_classes: int | None = None,
                     min_gain: float = MIN_GAIN_OVER_CHANCE) -> tuple[float, float]:
    """(majority-class rate, accuracy a network must exceed to count as trained).

    No constant prediction does better than the majority-class rate m, and neither does
    guessing at random; a network that learnt something from its own training set should close
    at least ``min_gain`` of the gap to perfect accuracy: threshold = m + min_gain·(1 − m).
    """
    y = _to_numpy(labels).astype(np.int64).ravel()
    counts = np.bincount(y, minlength=num_classes or 0)
    majority = float(counts.max() / counts.sum())
    return majority, majority + min_gain * (1.0 - majority)


def output_problems(logits: Any, labels: Any = None, num_classes: int | None = None, *,
                    min_gain: float = MIN_GAIN_OVER_CHANCE, max_abs: float = MAX_ABS_OUTPUT) -> list[str]:
    """Problems of a network's outputs on its training set: non-finite, huge or constant
    logits, and (with ``labels``) accuracy at chance. One logit column means a binary task
    (predicted class: logit > 0); several mean argmax."""
    z = _to_numpy(logits).astype(np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (N, C) array, got shape {z.shape}")
    bad = ~np.isfinite(z)
    if bad.any():
        return [f"the outputs on the training set hold {int(bad.sum())} non-finite value(s)"]
    problems = []
    peak = float(np.abs(z).max())
    if peak > max_abs:
        problems.append(f"the outputs blew up: max |logit| = {peak:.3g} > {max_abs:.3g}")
    spread = float(np.ptp(z, axis=0).max())
    if z.shape[0] > 1 and spread <= 1e-6 * max(1.0, peak):
        problems.append(f"the outputs are constant: every training sample gets the same logits "
                        f"({np.array2string(z[0][:5], precision=4)})")
    if labels is not None:
        y = _to_numpy(labels).astype(np.int64).ravel()
        if len(y) != z.shape[0]:
            raise ValueError(f"{len(y)} labels for {z.shape[0]} rows of logits")
        pred = (z[:, 0] > 0).astype(np.int64) if z.shape[1] == 1 else z.argmax(axis=1)
        acc = float((pred == y).mean())
        majority, threshold = chance_threshold(y, num_classes, min_gain)
        if majority >= 1.0:
            problems.append("the training labels hold a single class: there is nothing to learn")
        elif acc <= threshold:
            problems.append(f"training accuracy {acc:.4f} is at chance: the majority class alone gives "
                            f"{majority:.4f}, and a trained network should exceed {threshold:.4f}")
    return problems


def check_training(model: nn.Module, history: pd.DataFrame | None = None, train_logits: Any = None,
                   train_y: Any = None, num_classes: int | None = None, *, allow_failure: bool = False,
                   loss_column: str = "train_loss", what: str = "training",
                   hint: str = "lower the learning rate (or check the data); set "
                               "`allow_divergence: true` in the train block to keep such a run on purpose",
                   max_loss_growth: float = MAX_LOSS_GROWTH, max_abs_weight: float = MAX_ABS_WEIGHT,
                   max_abs_output: float = MAX_ABS_OUTPUT,
                   min_gain: float = MIN_GAIN_OVER_CHANCE) -> list[str]:
    """Check a trained network; raise :class:`TrainingFailed` listing every problem found.

    Args:
        model: the trained network (weights and floating buffers are checked).
        history: its training curve (``loss_column``: non-finite or blown-up loss), or None.
        train_logits: outputs on the training set (non-finite, huge or constant outputs), or
            None.
        train_y: its labels (accuracy at chance), or None (no label check without
            ``train_y``).
        num_classes: the number of classes (defaults to what the labels show).
        allow_failure: log the problems as a warning and return them instead of raising.
        what: names the run in the message, e.g. ``"training digits2-mlp seed 0"``.
        hint: what the user can do, appended to the message.

    Returns the list of problems (empty for a healthy run).
    """
    problems = loss_problems(history, loss_column, max_loss_growth) if history is not None else []
    problems += weight_problems(model, max_abs_weight)
    if train_logits is not None:
        problems += output_problems(train_logits, train_y, num_classes, min_gain=min_gain,
                                    max_abs=max_abs_output)
    if problems:
        message = f"{what} failed: " + "; ".join(problems) + (f". {hint}" if hint else "")
        if not allow_failure:
            raise TrainingFailed(message, problems)
        log.warning("%s (kept: failure allowed)", message)
    return problems
