"""Checked reading and atomic writing shared by the stages.

A stage never consumes an input it has not checked: every reader here validates what it
reads against what the rule expects and raises an error naming the file and the problem.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ntkbench.data import DataBundle
from ntkbench.utils import atomic_path

__all__ = ["InputError", "read_json", "read_logits", "write_csv"]


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


def read_logits(path: str | Path, bundle: DataBundle, splits: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The network's logits on every split of ``bundle``, checked against the bundle.

    Each ``<split>_logits`` must be finite with one row per point of the split, and the stored
    ``<split>_y`` labels must equal the bundle's (logits of another data set are refused).
    """
    splits = {"train": bundle.train, **bundle.eval_splits} if splits is None else splits
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable logits file ({err})") from err
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


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` as CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
