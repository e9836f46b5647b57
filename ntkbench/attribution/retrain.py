"""Training networks on subsets of the training set, with the experiment's own recipe.

A subset model is built and trained exactly as ``ntkbench.stages.train.train_stage`` builds and
trains the full-data model (``seed_everything(seed)`` → ``models.build(spec)`` →
``training.train_classifier(model, bundle, TrainConfig(**train_cfg), seed)``), on a
:class:`~ntkbench.data.DataBundle` whose training split is restricted to the subset.

Model seed scheme (:func:`subset_model_seed`): with ``scheme="same"`` (default) every subset
model uses the experiment's training seed ``s`` — the same initial weights as the full-data
model and the same shuffling generator (the mini-batches still differ, since the subsets do).
The subset outputs ``f_j(x)`` then differ only through the data, which is the quantity LDS
asks attributions to predict. With ``scheme="distinct"`` subset ``j`` uses its own seed
``SeedSequence([s, j, 1]).generate_state(1)[0]`` (a 32-bit integer), so initialisation noise
is part of the ground truth, as in TRAK's LDS protocol; with ``scheme="offset"`` it uses
``s + j``, as dattri's LDS retraining does.

Outputs recorded per subset model: the test logits and the true-class margin of every test
point (:func:`true_class_margin`); the LDS target (margin, or dattri's negated test loss) is
taken from them (:func:`lds_target`).

TracIn-CP needs intermediate checkpoints of a run: :func:`train_with_checkpoints` takes
snapshots at chosen epoch ends through a PyTorch optimizer step hook, without touching the
training loop, so the checkpointed run is the very same run as ``train_classifier``'s.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ntkbench import models
from ntkbench.data import DataBundle, Split
from ntkbench.metrics import accuracy, as_logits
from ntkbench.training import TrainConfig, evaluate_logits, train_classifier
from ntkbench.utils import resolve_device, seed_everything

__all__ = [
    "SEED_SCHEMES",
    "true_class_margin",
    "lds_target",
    "LDS_TARGETS",
    "subset_bundle",
    "subset_model_seed",
    "build_model",
    "Checkpoint",
    "TrainedRun",
    "default_checkpoint_epochs",
    "train_with_checkpoints",
    "retrain_subset",
]

SEED_SCHEMES = ("same", "distinct", "offset")


def true_class_margin(logits: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """True-class margin of every row, float64 ``(n,)``.

    ``C >= 2`` logits ``(n, C)``: ``z_y − max_{c≠y} z_c`` (positive iff correctly classified).
    ``C == 1`` (binary, one logit of class 1): the signed logit towards the true class,
    ``z`` when ``y = 1`` and ``−z`` when ``y = 0`` — the same quantity, since the implicit
    class-0 logit is 0.
    """
    z = as_logits(logits)
    labels = np.asarray(y).astype(np.int64).ravel()
    if labels.shape[0] != z.shape[0]:
        raise ValueError(f"logits have {z.shape[0]} rows but y has {labels.shape[0]} labels")
    if z.shape[1] == 1:
        if labels.size and (labels.min() < 0 or labels.max() > 1):
            raise ValueError("binary (one-logit) margins need labels 0/1")
        return np.where(labels == 1, z[:, 0], -z[:, 0])
    if labels.size and (labels.min() < 0 or labels.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in 0..{z.shape[1] - 1}")
    rows = np.arange(z.shape[0])
    others = z.copy()
    others[rows, labels] = -np.inf
    return z[rows, labels] - others.max(axis=1)


#: The LDS target of a subset network on a test point: ``margin`` (true-class margin, SPEC §6)
#: or ``neg_loss`` (the negated cross-entropy loss, dattri's ground truth).
LDS_TARGETS = ("margin", "neg_loss")


def lds_target(logits: ArrayLike, y: ArrayLike, target: str = "margin") -> NDArray[np.float64]:
    """The LDS target of every test point, float64 ``(n,)``, from logits ``(n, C)`` (C = 1:
    one binary logit) and labels ``(n,)``: the true-class margin, or the negated
    cross-entropy loss (binary cross-entropy on the one logit for C = 1), computed in float64."""
    if target == "margin":
        return true_class_margin(logits, y)
    if target != "neg_loss":
        raise ValueError(f"LDS target must be one of {LDS_TARGETS}, got {target!r}")
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    if z.ndim == 1:
        z = z.unsqueeze(1)
    if z.shape[1] == 1:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], labels.double(), reduction="none")
    else:
        loss = torch.nn.functional.cross_entropy(z, labels, reduction="none")
    return (-loss).numpy()


def subset_bundle(bundle: DataBundle, mask: ArrayLike) -> DataBundle:
    """The bundle with its training split restricted to ``mask`` (bool ``(N,)`` or indices).

    Test and extra evaluation splits are kept; ``extra`` arrays of length N are restricted
    too; ``meta["subset_size"]`` records the subset size.
    """
    n = len(bundle.train)
    sel = np.asarray(mask)
    if sel.dtype == bool:
        if sel.shape != (n,):
            raise ValueError(f"subset mask must have shape ({n},), got {sel.shape}")
        idx = np.flatnonzero(sel)
    else:
        idx = sel.astype(np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"subset indices must lie in 0..{n - 1}")
    if idx.size == 0:
        raise ValueError("empty training subset")
    t = torch.from_numpy(idx)
    extra = {k: (np.asarray(v)[idx] if np.ndim(v) >= 1 and len(v) == n else v)
             for k, v in bundle.extra.items()}
    return replace(bundle, train=Split(bundle.train.x[t], bundle.train.y[t]),
                   meta={**bundle.meta, "subset_size": int(idx.size)}, extra=extra)


def subset_model_seed(seed: int, index: int, scheme: str = "same") -> int:
    """Training seed of subset model ``index`` of an experiment whose training seed is ``seed``
    (see the module docstring): ``seed`` itself for ``"same"``, a 32-bit integer derived from
    ``(seed, index)`` for ``"distinct"``, ``seed + index`` for ``"offset"`` (dattri's LDS
    retraining with one run per subset)."""
    if scheme == "same":
        return int(seed)
    if scheme == "offset":
        return int(seed) + int(index)
    if scheme == "distinct":
        return int(np.random.SeedSequence([int(seed), int(index), 1]).generate_state(1)[0])
    raise ValueError(f"seed scheme must be one of {SEED_SCHEMES}, got {scheme!r}")


def build_model(bundle: DataBundle, model_spec: dict[str, Any], seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """Fresh network for ``bundle`` as ``train_stage`` builds it; returns (model, full spec).

    The initial weights depend on ``seed`` (``seed_everything(seed)`` right before building).
    """
    spec = {**model_spec, **bundle.model_args}  # as train_stage: input_shape, num_outputs, vocab_size...
    seed_everything(seed)
    return models.build(spec), spec


@dataclass
class Checkpoint:
    """Parameters and buffers after ``epoch`` epochs (0 = initialisation), and the learning
    rate of the optimizer at that point (``lr``, the η_t of TracIn-CP)."""

    epoch: int
    state_dict: dict[str, torch.Tensor]
    lr: float


@dataclass
class TrainedRun:
    """A trained model (eval mode, on the training device), its history and checkpoints."""

    model: nn.Module
    spec: dict[str, Any]
    history: Any  # pandas.DataFrame from train_classifier
    checkpoints: list[Checkpoint] = field(default_factory=list)
    seconds: float = 0.0


def default_checkpoint_epochs(epochs: int, count: int = 5) -> list[int]:
    """``count`` evenly spaced epoch ends ``1..epochs``, always including the last one."""
    if epochs < 1 or count < 1:
        raise ValueError(f"epochs and count must be positive, got {epochs}, {count}")
    marks = np.ceil(np.linspace(epochs / count, epochs, min(count, epochs))).astype(int)
    return sorted({int(m) for m in marks})


def _steps_per_epoch(model: nn.Module, n: int, batch_size: int) -> int:
    steps = math.ceil(n / batch_size)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and n % batch_size == 1:
        steps -= 1  # train_classifier skips a final single-sample batch for batch norm
    return steps


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_with_checkpoints(bundle: DataBundle, model_spec: dict[str, Any], train_cfg: dict[str, Any],
                           seed: int, device: str | torch.device = "cpu",
                           checkpoint_epochs: Sequence[int] = ()) -> TrainedRun:
    """Build and train one network exactly like ``train_stage``; keep checkpoints.

    ``checkpoint_epochs``: epoch ends (1..epochs; 0 = the initial weights) at which a
    :class:`Checkpoint` is taken. With the last epoch included, the last checkpoint equals
    the returned model.
    """
    dev = resolve_device(device)
    # ``allow_divergence`` belongs to train_stage's health check, not to TrainConfig.
    cfg = TrainConfig(**{k: v for k, v in train_cfg.items() if k != "allow_divergence"})
    wanted = sorted({int(e) for e in checkpoint_epochs})
    if wanted and (wanted[0] < 0 or wanted[-1] > cfg.epochs):
        raise ValueError(f"checkpoint epochs must lie in 0..{cfg.epochs}, got {wanted}")
    model, spec = build_model(bundle, model_spec, seed)
    checkpoints: list[Checkpoint] = []
    if 0 in wanted:
        checkpoints.append(Checkpoint(0, _snapshot(model), float(cfg.lr)))
    per_epoch = _steps_per_epoch(model, len(bundle.train), cfg.batch_size)
    targets = {e * per_epoch: e for e in wanted if e > 0}
    first_param = next(model.parameters())
    state = {"steps": 0}

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if optimizer.param_groups[0]["params"][0] is not first_param:
            return  # some other optimizer
        state["steps"] += 1
        epoch = targets.get(state["steps"])
        if epoch is not None:
            checkpoints.append(Checkpoint(epoch, _snapshot(model), float(optimizer.param_groups[0]["lr"])))

    handle = register_optimizer_step_post_hook(hook) if targets else None
    start = time.perf_counter()
    try:
        history = train_classifier(model, bundle, cfg, seed=seed, device=dev, log_every=max(cfg.epochs, 1))
    finally:
        if handle is not None:
            handle.remove()
    seconds = time.perf_counter() - start
    if targets and state["steps"] != cfg.epochs * per_epoch:
        raise RuntimeError(f"expected {cfg.epochs * per_epoch} optimizer steps, counted {state['steps']}: "
                           "the training loop changed; checkpoints would be taken at the wrong times")
    return TrainedRun(model.eval(), spec, history, checkpoints, seconds)


def retrain_subset(bundle: DataBundle, mask: ArrayLike, model_spec: dict[str, Any],
                   train_cfg: dict[str, Any], seed: int, device: str | torch.device = "cpu",
                   keep_state: bool = False) -> dict[str, Any]:
    """Train one network on the subset ``mask`` and evaluate it on the full test split.

    ``seed`` is the subset model's training seed (see :func:`subset_model_seed`). Returns a
    dict of arrays and numbers, ready for ``atomic_savez``:

    - ``margins``: true-class margins on the test split, float64 ``(n_test,)``;
    - ``logits``: test logits, float32 ``(n_test, C)``;
    - ``train_acc`` (on the subset), ``test_acc``, ``seconds`` (training wall time), ``seed``,
      ``subset_size``;
    - with ``keep_state``, ``state``: the trained network's state dict (CPU tensors).
    """
    sub = subset_bundle(bundle, mask)
    dev = resolve_device(device)
    run = train_with_checkpoints(sub, model_spec, train_cfg, seed, dev)
    test_logits = evaluate_logits(run.model, bundle.test.x, device=dev).numpy()
    train_logits = evaluate_logits(run.model, sub.train.x, device=dev).numpy()
    y_test = bundle.test.y.numpy()
    extra = {"state": {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}} if keep_state else {}
    return {
        **extra,
        "margins": true_class_margin(test_logits, y_test),
        "logits": test_logits,
        "train_acc": accuracy(train_logits, sub.train.y.numpy()),
        "test_acc": accuracy(test_logits, y_test),
        "seconds": run.seconds,
        "seed": int(seed),
        "subset_size": len(sub.train),
    }
