"""Checked reading and atomic writing shared by the stages.

A stage never consumes an input it has not checked: every reader here validates what it
reads against what the rule expects and raises an error naming the file and the problem.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from ntkbench import models
from ntkbench.data import DataBundle
from ntkbench.integrity import load_npz, recompute_hint
from ntkbench.training import evaluate_logits
from ntkbench.utils import atomic_path

__all__ = ["InputError", "read_json", "read_npz", "read_logits", "load_model", "logits_mismatch", "check_reproduces_logits",
           "write_csv", "snakemake_field", "job_from_snakemake"]

# How many training points a stage re-evaluates to check that a network still produces its logits.
PROBE_POINTS = 32


class InputError(ValueError):
    """A stage input is missing, unreadable or not what the rule expects."""


def read_json(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object from ``path``; a clear error for an unreadable file or missing keys."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON report ({err}); delete it so that it is recomputed") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    missing = [key for key in required if key not in data]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}; has {sorted(data)}")
    return data


def read_npz(path: str | Path, required: tuple[str, ...] | list[str] = (), what: str = "npz file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, CRC-checked (:func:`ntkbench.integrity.load_npz`: a damaged
    file raises :class:`ntkbench.integrity.CorruptFileError` naming it); ``required`` arrays must
    be there."""
    data = load_npz(path, what=what)
    missing = [key for key in required if key not in data]
    if missing:
        raise InputError(f"{path}: missing array(s) {missing}; has {sorted(data)}")
    return data


def read_logits(path: str | Path, bundle: DataBundle, splits: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The network's logits on every split of ``bundle``, checked against the bundle.

    Each ``<split>_logits`` must be finite with one row per point of the split, and the stored
    ``<split>_y`` labels must equal the bundle's (logits of another data set are refused).
    """
    splits = {"train": bundle.train, **bundle.eval_splits} if splits is None else splits
    data = load_npz(path, what="logits file")
    for name, split in splits.items():
        logits, labels = data.get(f"{name}_logits"), data.get(f"{name}_y")
        if logits is None or labels is None:
            raise InputError(f"{path}: no logits for split {name!r} (has {sorted(data)})")
        if logits.shape[0] != len(split) or not np.array_equal(labels, split.y.numpy()):
            raise InputError(f"{path}: the {name} logits ({logits.shape[0]} rows) do not belong to this data "
                             f"bundle ({len(split)} points, labels {'equal' if np.array_equal(labels, split.y.numpy()) else 'differ'})")
        if not np.isfinite(logits).all():
            raise InputError(f"{path}: non-finite {name} logits (a diverged network?)")
    return data


def logits_mismatch(model: nn.Module, bundle: DataBundle, logits: Mapping[str, np.ndarray],
                    points: int = PROBE_POINTS) -> str | None:
    """Why ``model`` does not reproduce its stored ``train_logits`` on ``points`` evenly spaced
    training points, or None when it does.

    The checkpoint's checksum proves the file is the one written, not that it is the network
    the logits (and everything computed from them) came from: a swapped or retrained
    ``model.pt`` would give kernels of another network with a plausible summary. Tolerance:
    1e-4 of the logits' scale on the CPU (the same float32 arithmetic as training), 1e-2 on an
    accelerator (TF32 convolutions, other reduction orders).
    """
    stored = logits.get("train_logits")
    if stored is None or len(stored) != len(bundle.train):
        return f"no train logits for the {len(bundle.train)} training points"
    idx = np.unique(np.linspace(0, len(bundle.train) - 1, min(points, len(bundle.train))).round().astype(np.int64))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        out = evaluate_logits(model, bundle.train.x[idx], device=device).double().numpy().reshape(len(idx), -1)
    want = np.asarray(stored[idx], dtype=np.float64).reshape(len(idx), -1)
    if out.shape != want.shape:
        return f"the network has {out.shape[1]} output(s), the logits {want.shape[1]}"
    diff = float(np.abs(out - want).max()) if out.size else 0.0
    tol = (1e-4 if device.type == "cpu" else 1e-2) * max(1.0, float(np.abs(want).max()) if want.size else 0.0)
    if not diff <= tol:
        return f"largest difference {diff:.3g} on {len(idx)} training points, tolerance {tol:.2g}"
    return None


def check_reproduces_logits(model: nn.Module, bundle: DataBundle, logits: Mapping[str, np.ndarray],
                            model_path: str | Path, logits_path: str | Path) -> None:
    """Raise :class:`InputError` naming both files when ``model`` does not reproduce the logits
    of ``logits_path`` (:func:`logits_mismatch`)."""
    why = logits_mismatch(model, bundle, logits)
    if why is not None:
        raise InputError(f"{model_path}: the network does not reproduce its logits {logits_path} ({why}): the "
                         f"two files come from different networks. {recompute_hint(model_path)}")


def load_model(model_path: str | Path, bundle: DataBundle, logits_path: str | Path | None = None,
               logits: Mapping[str, np.ndarray] | None = None,
               device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A checked network: its checkpoint's checksum verified (:func:`ntkbench.models.load_checkpoint`)
    and, when ``logits_path`` is given, checked to reproduce those logits
    (:func:`check_reproduces_logits`; ``logits`` are that file's arrays when already read).
    Returns (model in eval mode on ``device``, checkpoint dict)."""
    model, ckpt = models.load_checkpoint(model_path, device=device)
    if logits_path is not None:
        if logits is None:
            logits = read_logits(logits_path, bundle, {"train": bundle.train})
        check_reproduces_logits(model, bundle, logits, model_path, logits_path)
    return model, ckpt


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` as CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


# -- stage jobs -----------------------------------------------------------------------------
# Stages with many inputs take one frozen dataclass (a *job*); its fields say where in
# Snakemake's job object each value comes from, so that one helper builds every job and the
# workflow scripts stay one line.

Job = TypeVar("Job")


def snakemake_field(where: str, *, convert: Callable[[Any], Any] | None = None, keyed_by: str | None = None,
                    **kwargs: Any) -> Any:
    """A job field read from Snakemake's ``snakemake`` object by :func:`job_from_snakemake`.

    Args:
        where: ``"input.data"``, ``"params.options"``, ``"wildcards.kernel"``, ``"output[0]"``,
            or a bare ``"output"`` / ``"wildcards"`` (the whole named-list object).
        convert: applied to the value read (e.g. ``list``, ``int``).
        keyed_by: a second ``where``; the field becomes ``dict(zip(keys, value))``, with list
            keys made tuples (e.g. kernel files keyed by ``params.kernels``, the order of the
            rule's inputs).
        kwargs: passed to :func:`dataclasses.field` (``default=...``).
    """
    return dataclasses.field(metadata={"snakemake": where, "convert": convert, "keyed_by": keyed_by}, **kwargs)


def _snakemake_value(sm: Any, where: str) -> Any:
    attr, _, rest = where.partition(".")
    if "[" in attr:  # output[0]
        attr, index = attr.rstrip("]").split("[")
        return getattr(sm, attr)[int(index)]
    obj = getattr(sm, attr)
    if not rest:
        return dict(obj.items()) if attr in ("input", "output", "params") else obj
    return getattr(obj, rest)


def job_from_snakemake(cls: type[Job], sm: Any, **values: Any) -> Job:
    """The job dataclass ``cls`` of a stage, each field read from ``sm`` (Snakemake's
    ``snakemake`` object) where its :func:`snakemake_field` says, unless given in ``values``."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            kwargs[f.name] = values[f.name]
            continue
        where = f.metadata.get("snakemake")
        if where is None:
            continue  # a field with its own default
        value = _snakemake_value(sm, where)
        if f.metadata["convert"] is not None:
            value = f.metadata["convert"](value)
        if f.metadata["keyed_by"] is not None:
            keys = [tuple(k) if isinstance(k, list) else k for k in _snakemake_value(sm, f.metadata["keyed_by"])]
            value = dict(zip(keys, value, strict=True))
        kwargs[f.name] = value
    return cls(**kwargs)

