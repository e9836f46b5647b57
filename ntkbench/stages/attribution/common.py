"""Helpers shared by the attribution stages: table columns and data fingerprints."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ntkbench import store
from ntkbench.data import DataBundle
from ntkbench.stages.common import InputError

__all__ = ["KERNEL_METHODS", "TABLE_COLUMNS", "fingerprints", "data_provenance", "check_fingerprints"]

#: Methods computed per kernel; the loss-gradient methods are ``methods.GRADIENT_METHODS``.
KERNEL_METHODS = ("kglm", "kernel-sim")

#: Columns of the per-experiment tables and of ``results/attribution.csv``, in order.
TABLE_COLUMNS = ["experiment", "method", "kernel", "lds", "lds_sem", "auc", "tau", "tau_true_class",
                 "lds_n_valid", "lds_n_test", "lds_n_subsets", "detection_area", "n_flipped", "seed",
                 "fraction", "seed_scheme", "target"]


def fingerprints(bundle: DataBundle) -> dict[str, np.ndarray]:
    return {"data_fingerprint_x": np.array(store.tensor_fingerprint(bundle.train.x)),
            "data_fingerprint_y": np.array(store.tensor_fingerprint(bundle.train.y)),
            "test_fingerprint_y": np.array(store.tensor_fingerprint(bundle.test.y))}


def data_provenance(bundle: DataBundle) -> dict[str, str]:
    """The data's fingerprints as plain strings: the ``data`` record of a ground truth's provenance."""
    return {key: str(value) for key, value in fingerprints(bundle).items()}


def check_fingerprints(path: str | Path, data: Mapping[str, Any], bundle: DataBundle) -> None:
    for key, value in fingerprints(bundle).items():
        if key not in data or str(data[key]) != str(value):
            raise InputError(f"{path}: computed on other data than this bundle ({key} differs); "
                             "delete it so that it is recomputed")
