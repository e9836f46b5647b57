"""Torch-free helpers the rules call while the Snakefile is parsed: which runs and
experiments exist, and which settings each stage depends on (its ``params``), so that
changing a setting reruns exactly the stages that read it.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ntkbench.tiles import tile_grid
from ntkbench.config import experiment_kglm, experiment_seeds, modadd_experiment_config

__all__ = [
    "experiment_seeds",
    "experiment_kglm",
    "tms_run_name",
    "tms_runs",
    "modadd_experiment_config",
    "settings",
    "kernel_tiles",
    "STAGE_SETTINGS",
]

# The settings of the spectral blocks each stage reads: a changed analysis setting (betas,
# top_k, the cliff detector) never retrains, and a changed detector reruns only the reports.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "tms_train": ("n_features", "importance", "num_points", "data_seed", "seed", "lr", "steps", "allow_divergence"),
    "tms_spectrum": ("importance", "betas", "top_k", "represented_threshold"),
    "tms_report": ("n_features", "num_points", "importance", "represented_threshold", "cliffs"),
    "modadd_train": ("p", "width", "train_fraction", "split_seed", "lr", "weight_decay", "epochs",
                     "checkpoint_every", "allow_divergence"),
    "modadd_spectra": ("top_k", "store_vectors"),
    "modadd_full_entk": ("full_top_k",),
    "modadd_report": ("cliffs",),
}


def settings(stage: str, block: dict[str, Any]) -> dict[str, Any]:
    """The part of a config block (``spectral.tms`` or one modadd experiment) ``stage`` reads."""
    return {key: block[key] for key in STAGE_SETTINGS[stage] if key in block}


def tms_run_name(m: int, sparsity: float) -> str:
    """Directory name of one TMS run, e.g. ``m10_S0.3``."""
    return f"m{int(m)}_S{float(sparsity):g}"


def tms_runs(tms_cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{run name: {"m", "sparsity"}} in config order."""
    return {tms_run_name(r["m"], r["sparsity"]): {"m": int(r["m"]), "sparsity": float(r["sparsity"])}
            for r in tms_cfg["runs"]}


def _npz_rows(path: str | Path) -> dict[str, int]:
    """Row count of every array of an .npz file, read from the array headers only."""
    rows = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            with zf.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape = read(fh)[0]
            rows[name.removesuffix(".npy")] = shape[0] if shape else 0
    return rows


def kernel_tiles(data_path: str | Path, tile_size: int) -> dict[str, list[tuple[int, int]]]:
    """{kernel group: tiles (i, j)} of a data bundle's kernels (see ntkbench.kernels.tiling):
    train x train (upper triangle) and every evaluation split x train."""
    rows = _npz_rows(data_path)
    n_train = rows["train_x"]
    splits = {"test": rows["test_x"]}
    splits.update({k[len("split_"):-len("_x")]: v for k, v in rows.items() if k.startswith("split_") and k.endswith("_x")})
    grid = {"train_train": tile_grid(n_train, n_train, tile_size, True)}
    grid.update({f"{name}_train": tile_grid(n, n_train, tile_size, False) for name, n in splits.items()})
    return grid
