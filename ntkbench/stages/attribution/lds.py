"""Attribution stage: LDS ± SEM and mislabel-detection AUC of every method on one experiment."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ntkbench import models, store
from ntkbench.attribution.benchmark import stored_kglm_attributions
from ntkbench.attribution.lds import compute_lds
from ntkbench.attribution.mislabel import auc_rows
from ntkbench.attribution.retrain import lds_target, subset_model_seed
from ntkbench.attribution.subsets import subset_mask
from ntkbench.data import DataBundle, load_bundle
from ntkbench.stages.attribution.common import KERNEL_METHODS, TABLE_COLUMNS, check_fingerprints
from ntkbench.stages.common import InputError, read_json, read_npz, snakemake_field, write_csv
from ntkbench.stages.kernels import check_kernel_file
from ntkbench.stages.surrogates import read_kglm_fit
from ntkbench.utils import get_logger

log = get_logger(__name__)

__all__ = ["gather_subsets", "LdsJob", "lds_stage"]


def gather_subsets(paths: Sequence[str | Path], bundle: DataBundle, num_subsets: int, settings: Mapping[str, Any],
                   seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """``(masks (M, N), outputs (M, n_test), info)`` from the subset jobs' files, subsets in
    index order; ``outputs`` is the LDS target ``settings["target"]`` (true-class margin, or
    negated test loss) of each subset network, from its stored test logits. Every file is
    checked: this data bundle, these settings, and each mask must be the deterministic draw of
    its index (so a stale or foreign file is refused); indices must be exactly ``0..M-1``."""
    n, n_test = len(bundle.train), len(bundle.test)
    parts = []
    for path in paths:
        data = read_npz(path, ("index", "mask", "margins", "logits", "model_seed", "test_acc", "fraction",
                                "subset_seed", "seed", "seed_scheme"))
        check_fingerprints(path, data, bundle)
        expected = {"fraction": float(settings["fraction"]), "subset_seed": int(settings["subset_seed"]),
                    "subset_draw": str(settings["subset_draw"]), "seed": int(seed),
                    "seed_scheme": str(settings["seed_scheme"])}
        # files written before subset_draw existed hold ntkbench's draw
        found = {"fraction": float(data["fraction"]), "subset_seed": int(data["subset_seed"]),
                 "subset_draw": str(data.get("subset_draw", "ntkbench")), "seed": int(data["seed"]),
                 "seed_scheme": str(data["seed_scheme"])}
        if found != expected:
            raise InputError(f"{path}: subsets trained with {found}, expected {expected}")
        if data["mask"].shape != (len(data["index"]), n) or data["margins"].shape != (len(data["index"]), n_test) \
                or data["logits"].shape[:2] != (len(data["index"]), n_test):
            raise InputError(f"{path}: masks {data['mask'].shape} / margins {data['margins'].shape} / logits "
                             f"{data['logits'].shape} do not fit {len(data['index'])} subsets of {n} training and "
                             f"{n_test} test points")
        for row, j in enumerate(data["index"]):
            if not np.array_equal(data["mask"][row], subset_mask(n, expected["fraction"], expected["subset_seed"], int(j),
                                                                 expected["subset_draw"])):
                raise InputError(f"{path}: the mask of subset {int(j)} is not its deterministic draw")
            if int(data["model_seed"][row]) != subset_model_seed(seed, int(j), expected["seed_scheme"]):
                raise InputError(f"{path}: subset {int(j)} was trained with model seed {int(data['model_seed'][row])}")
        parts.append(data)
    index = np.concatenate([p["index"] for p in parts])
    if sorted(index.tolist()) != list(range(num_subsets)):
        raise InputError(f"subset files {list(map(str, paths))} hold subsets {sorted(index.tolist())}, "
                         f"expected 0..{num_subsets - 1}")
    order = np.argsort(index)
    masks = np.concatenate([p["mask"] for p in parts])[order]
    y_test = bundle.test.y.numpy()
    if settings["target"] == "margin":  # as stored (bit for bit what the subset job computed)
        outputs = np.concatenate([p["margins"] for p in parts])[order]
    else:
        outputs = np.stack([lds_target(z, y_test, settings["target"]) for p in parts for z in p["logits"]])[order]
    test_acc = np.concatenate([p["test_acc"] for p in parts])
    if not np.all(np.isfinite(outputs)):
        raise InputError(f"a subset model produced a non-finite LDS target ({settings['target']}; training diverged?)")
    info = {"subset_test_acc_mean": float(test_acc.mean()), "subset_test_acc_min": float(test_acc.min())}
    return masks.astype(bool), outputs.astype(np.float64), info


def _kglm_scores(kind: str, bundle: DataBundle, kernel_path: str | Path, options: dict[str, Any],
                 model: torch.nn.Module, kglm_npz: str | Path, signed: bool) -> dict[str, np.ndarray]:
    """kGLM and kernel-similarity scores of one kernel from the surrogate stage's saved fit."""
    check_kernel_file(kernel_path, kind, options, model, bundle, ["test_train"])
    K = store.read_kernel(kernel_path, "test_train").kernel.astype(np.float64)
    glm, _, _ = read_kglm_fit(kglm_npz, kernel_path, K, len(bundle.train), bundle.num_outputs)
    return stored_kglm_attributions(glm.coef_, glm.intercept_, K, bundle.test.y.numpy(), bundle.train.y.numpy(),
                                              signed_similarity=signed)


@dataclass(frozen=True)
class LdsJob:
    """The inputs of one experiment's LDS job (rule ``attribution_lds``): the attributed
    network of training seed ``seed``, its subset retrainings, and per kernel (keyed by the
    names in ``kernels``) its kernel file, kernel options and kGLM fit and report; the
    gradient methods' scores and the noisy-label twin's self-influence; ``settings`` from
    the ``attribution:`` block; the table is written to ``out_csv``."""

    experiment: str = snakemake_field("wildcards.experiment")
    data_path: str | Path = snakemake_field("input.data")
    model_path: str | Path = snakemake_field("input.model")
    seed: int = snakemake_field("params.seed", convert=int)
    subset_paths: Sequence[str | Path] = snakemake_field("input.subsets", convert=list)
    kernels: Sequence[str] = snakemake_field("params.kernels", convert=list)
    # params.kernels is the order of the kernel and kGLM inputs
    kernel_paths: Mapping[str, str | Path] = snakemake_field("input.kernels", keyed_by="params.kernels")
    kernel_options: Mapping[str, dict[str, Any]] = snakemake_field("params.kernel_options")
    kglm_npz_paths: Mapping[str, str | Path] = snakemake_field("input.kglm_fits", keyed_by="params.kernels")
    kglm_json_paths: Mapping[str, str | Path] = snakemake_field("input.kglm_reports", keyed_by="params.kernels")
    gradients_path: str | Path = snakemake_field("input.gradients")
    # None: no noisy-label twin (attribution.mislabel: null), no AUC
    mislabel_path: str | Path | None = snakemake_field("input.mislabel", convert=lambda v: v or None)
    settings: Mapping[str, Any] = snakemake_field("params.settings")
    out_csv: str | Path = snakemake_field("output[0]")


def lds_stage(job: LdsJob) -> pd.DataFrame:
    """One experiment's table: a row per method (kGLM and similarity per kernel, then the
    gradient methods) with LDS ± SEM, mislabel AUC and, for kGLM rows, τ; columns
    :data:`TABLE_COLUMNS`. Every input is checked before use."""
    seed, settings = job.seed, job.settings
    bundle = load_bundle(job.data_path)
    model, ckpt = models.load_checkpoint(job.model_path)
    if int(ckpt.get("seed", -1)) != int(seed):
        raise InputError(f"{job.model_path}: a network of training seed {ckpt.get('seed')}, expected {seed}")
    masks, outputs, info = gather_subsets(job.subset_paths, bundle, int(settings["num_subsets"]), settings, seed)
    log.info("%s: %d subsets of %d points, subset networks' test accuracy %.3f (min %.3f)", job.experiment,
             len(masks), int(masks[0].sum()), info["subset_test_acc_mean"], info["subset_test_acc_min"])

    grads = read_npz(job.gradients_path, ("methods",))
    check_fingerprints(job.gradients_path, grads, bundle)
    if str(grads.get("model_fingerprint")) != store.model_fingerprint(model):
        raise InputError(f"{job.gradients_path}: computed for another network than {job.model_path}")
    if job.mislabel_path is not None:
        mis = read_npz(job.mislabel_path, ("flipped",))
        check_fingerprints(job.mislabel_path, mis, bundle)
        flipped = mis["flipped"].astype(bool)
    else:
        mis, flipped = None, None

    rows = []
    signed = bool(settings["signed_similarity"])
    for kind in job.kernels:
        scores = _kglm_scores(kind, bundle, job.kernel_paths[kind], job.kernel_options[kind], model, job.kglm_npz_paths[kind], signed)
        report = read_json(job.kglm_json_paths[kind], required=("test", "kernel"))
        if report["kernel"] != kind:
            raise InputError(f"{job.kglm_json_paths[kind]}: the kGLM report of kernel {report['kernel']!r}, expected {kind!r}")
        for method in KERNEL_METHODS:
            key = f"selfinf_{method}__{kind}"
            if mis is not None and key not in mis:
                raise InputError(f"{job.mislabel_path}: no self-influence {key!r} (computed for other kernels?)")
            tau = report["test"] if method == "kglm" else {}
            rows.append(_row(job.experiment, method, kind, scores[method], masks, outputs,
                             None if mis is None else mis[key], flipped,
                             tau.get("tau", math.nan), tau.get("tau_true_class", math.nan)))
    for method in [str(m) for m in grads["methods"]]:
        if mis is not None and f"selfinf_{method}" not in mis:
            raise InputError(f"{job.mislabel_path}: no self-influence of {method!r}")
        rows.append(_row(job.experiment, method, "", grads[f"scores_{method}"], masks, outputs,
                         None if mis is None else mis[f"selfinf_{method}"], flipped, math.nan, math.nan))
    table = pd.DataFrame(rows)
    table["seed"] = int(seed)
    table["fraction"] = float(settings["fraction"])
    table["seed_scheme"] = str(settings["seed_scheme"])
    table["target"] = str(settings["target"])
    table = table[TABLE_COLUMNS]
    write_csv(table, job.out_csv)
    for row in table.itertuples():
        log.info("%s %-10s %-10s LDS %.3f ± %.3f  AUC %.3f", job.experiment, row.method, row.kernel, row.lds, row.lds_sem,
                 row.auc)
    return table


def _row(experiment: str, method: str, kernel: str, scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray,
         selfinf: np.ndarray | None, flipped: np.ndarray | None, tau: float, tau_true_class: float) -> dict[str, Any]:
    if scores.shape != (outputs.shape[1], masks.shape[1]):
        raise InputError(f"{method} {kernel}: scores of shape {scores.shape}, expected {(outputs.shape[1], masks.shape[1])}")
    lds = compute_lds(scores, masks, outputs)
    auc = auc_rows({method: selfinf}, flipped)[0] if selfinf is not None else \
        {"auc": math.nan, "detection_area": math.nan, "n_flipped": 0}
    return {"experiment": experiment, "method": method, "kernel": kernel, **lds.as_dict(), "auc": auc["auc"],
            "detection_area": auc["detection_area"], "n_flipped": auc["n_flipped"], "tau": float(tau),
            "tau_true_class": float(tau_true_class)}
