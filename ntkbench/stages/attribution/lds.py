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
from ntkbench.data import DataBundle, load_bundle
from ntkbench.stages.attribution.common import KERNEL_METHODS, TABLE_COLUMNS, check_fingerprints
from ntkbench.stages.attribution.ground_truth import load_ground_truth
from ntkbench.stages.common import InputError, read_json, read_npz, snakemake_field, write_csv
from ntkbench.stages.kernels import check_kernel_file
from ntkbench.stages.surrogates import read_kglm_fit
from ntkbench.utils import get_logger

log = get_logger(__name__)

__all__ = ["LdsJob", "lds_stage"]


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
    network of training seed ``seed`` (its model spec and recipe), the ground truth of its
    subset retrainings, and per kernel (keyed by the names in ``kernels``) its kernel file,
    kernel options and kGLM fit and report; the gradient methods' scores, the influence
    functions' scores and the noisy-label twin's self-influence; ``settings`` from the
    ``attribution:`` block; the table is written to ``out_csv``."""

    experiment: str = snakemake_field("wildcards.experiment")
    data_path: str | Path = snakemake_field("input.data")
    model_path: str | Path = snakemake_field("input.model")
    seed: int = snakemake_field("params.seed", convert=int)
    model_spec: Mapping[str, Any] = snakemake_field("params.model")
    train_cfg: Mapping[str, Any] = snakemake_field("params.train")
    ground_truth_path: str | Path = snakemake_field("input.ground_truth")
    kernels: Sequence[str] = snakemake_field("params.kernels", convert=list)
    # params.kernels is the order of the kernel and kGLM inputs
    kernel_paths: Mapping[str, str | Path] = snakemake_field("input.kernels", keyed_by="params.kernels")
    kernel_options: Mapping[str, dict[str, Any]] = snakemake_field("params.kernel_options")
    kglm_npz_paths: Mapping[str, str | Path] = snakemake_field("input.kglm_fits", keyed_by="params.kernels")
    kglm_json_paths: Mapping[str, str | Path] = snakemake_field("input.kglm_reports", keyed_by="params.kernels")
    gradients_path: str | Path = snakemake_field("input.gradients")
    # None: no influence-function rows (attribution.influence: null)
    influence_path: str | Path | None = snakemake_field("input.influence", convert=lambda v: v or None)
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
    truth = load_ground_truth(job.ground_truth_path, bundle, job.model_spec, job.train_cfg, settings, seed)
    masks, outputs = truth.masks, truth.outputs(settings["target"])
    log.info("%s: %d subsets of %d points, subset networks' test accuracy %.3f (min %.3f)", job.experiment,
             len(masks), int(masks[0].sum()), truth.test_acc.mean(), truth.test_acc.min())

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
    rows += _influence_rows(job, bundle, model, masks, outputs)
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


def _influence_rows(job: LdsJob, bundle: DataBundle, model: torch.nn.Module, masks: np.ndarray,
                    outputs: np.ndarray) -> list[dict[str, Any]]:
    """Rows of the influence functions (none for a network the job skipped as too large)."""
    if job.influence_path is None:
        return []
    inf = read_npz(job.influence_path, ("methods", "model_fingerprint"))
    check_fingerprints(job.influence_path, inf, bundle)
    if str(inf["model_fingerprint"]) != store.model_fingerprint(model):
        raise InputError(f"{job.influence_path}: computed for another network than {job.model_path}")
    # no noisy-label twin of the influence functions: no AUC
    return [_row(job.experiment, str(m), "", inf[f"scores_{m}"], masks, outputs, None, None, math.nan, math.nan)
            for m in inf["methods"]]


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
