"""Helpers shared by the attribution stages: table columns, data fingerprints, checked .npz reading."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ntkbench import store
from ntkbench.data import DataBundle
from ntkbench.stages.common import InputError

__all__ = ["KERNEL_METHODS", "TABLE_COLUMNS", "fingerprints", "check_fingerprints", "load_npz"]

#: Methods computed per kernel; the loss-gradient methods are ``methods.GRADIENT_METHODS``.
KERNEL_METHODS = ("kglm", "kernel-sim")

#: Columns of the per-experiment tables and of ``results/attribution.csv``, in order.
TABLE_COLUMNS = ["experiment", "method", "kernel", "lds", "lds_sem", "auc", "tau", "tau_true_class",
                 "lds_n_valid", "lds_n_test", "lds_n_subsets", "detection_area", "n_flipped", "seed",
                 "fraction", "seed_scheme"]


def fingerprints(bundle: DataBundle) -> dict[str, np.ndarray]:
    return {"data_fingerprint_x": np.array(store.tensor_fingerprint(bundle.train.x)),
            "data_fingerprint_y": np.array(store.tensor_fingerprint(bundle.train.y)),
            "test_fingerprint_y": np.array(store.tensor_fingerprint(bundle.test.y))}


def check_fingerprints(path: str | Path, data: Mapping[str, Any], bundle: DataBundle) -> None:
    for key, value in fingerprints(bundle).items():
        if key not in data or str(data[key]) != str(value):
            raise InputError(f"{path}: computed on other data than this bundle ({key} differs); "
                             "delete it so that it is recomputed")


def load_npz(path: str | Path, required: Sequence[str] = ()) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable .npz file ({err}); delete it so that it is recomputed") from err
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{path}: missing array(s) {missing}; has {sorted(data)}")
    return data
