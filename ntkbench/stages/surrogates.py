"""Stage 3: kernel-GLM surrogates and their faithfulness to the network."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ntkbench import metrics, store
from ntkbench.data import load_bundle
from ntkbench.stages.common import InputError, load_model, read_logits, read_npz
from ntkbench.stages.kernels import check_kernel_file
from ntkbench.surrogate import KernelGLM
from ntkbench.utils import atomic_savez, atomic_write_text, get_logger

log = get_logger(__name__)

__all__ = ["kglm_stage", "read_kglm_fit", "ROW_CHUNK"]

#: Test rows per float64 block when a saved kGLM is re-evaluated (never a float64 copy of a
#: whole test x train kernel: GBs at paper scale).
ROW_CHUNK = 1024


def kglm_stage(data_path: str | Path, logits_path: str | Path, model_path: str | Path,
               kernel_path: str | Path, kind: str, kernel_options: dict[str, Any],
               kglm_cfg: dict[str, Any], out_json: str | Path, out_npz: str | Path,
               variant: str = "default") -> dict[str, Any]:
    """Fit a kGLM on the train x train kernel and measure its faithfulness on every eval split.

    The kernel file is checked first against what the rule expects (kind ``kind`` with
    ``kernel_options``, computed from the model at ``model_path`` on this data bundle, finite,
    symmetric, normalised when its kind is). Targets are the true labels, or the network's own
    predictions when ``kglm_cfg["target"] == "predictions"`` (paper 001, appendix I).
    ``kglm_cfg`` is one entry of :func:`ntkbench.config.kglm_variants`, named ``variant``; the
    report names the variant, the solver and every setting of the fit.
    """
    bundle = load_bundle(data_path)
    nn_out = read_logits(logits_path, bundle)
    model, _ = load_model(model_path, bundle, logits_path, nn_out)
    check_kernel_file(kernel_path, kind, kernel_options, model, bundle)
    target, seed = kglm_cfg["target"], int(kglm_cfg["seed"])
    train = store.read_kernel(kernel_path, "train_train")
    y_train = bundle.train.y.numpy() if target == "labels" else metrics.predicted_labels(nn_out["train_logits"])
    glm = KernelGLM.from_config(kglm_cfg).fit(train.kernel, y_train)
    report: dict[str, Any] = {
        "kernel": kind, "variant": variant, "target": target, "solver": kglm_cfg["solver"],
        "alpha": kglm_cfg["alpha"], "kglm": {**kglm_cfg}, "kglm_fit": glm.describe(),
        "kernel_file": {key: train.attrs.get(key) for key in ("identity_options", "model_fingerprint",
                                                                "data_fingerprint_x")},
        "train_acc": float((glm.predict(train.kernel) == bundle.train.y.numpy()).mean()),
    }
    kglm_logits = {"train": glm.decision_function(train.kernel)}
    for name, split in bundle.eval_splits.items():
        k = store.read_kernel(kernel_path, f"{name}_train").kernel
        z = glm.decision_function(k)
        kglm_logits[name] = z
        scores = metrics.faithfulness(nn_out[f"{name}_logits"], z, split.y.numpy(), seed=seed)
        # Attribution identity (eq. 3): the per-training-point attributions sum to the logit.
        attr = glm.attribution(k[: min(len(k), 16)])
        scores["attribution_max_abs_error"] = float(np.abs(attr.sum(axis=1) - z[: len(attr)]).max())
        report[name] = scores
        log.info("%s: %s", name, {k2: round(v, 4) if isinstance(v, float) else v for k2, v in scores.items()})
    atomic_write_text(out_json, json.dumps(report, indent=2, default=float))
    # The fitted W and b too: attribution (eq. 3) and the attribution benchmark reuse them.
    atomic_savez(out_npz, **{f"{k}_logits": v for k, v in kglm_logits.items()}, coef=glm.coef_,
                 intercept=glm.intercept_)
    return report


def read_kglm_fit(npz_path: str | Path, kernel_path: str | Path, K: np.ndarray, n_train: int,
                  c_out: int) -> tuple[KernelGLM, np.ndarray, np.ndarray]:
    """The kGLM :func:`kglm_stage` saved in ``npz_path``, checked before any later stage uses it.

    ``K`` (M, N) is the test x train kernel read from ``kernel_path``. W ``(c_out, n_train)``
    and b ``(c_out,)`` must have the bundle's shapes and reproduce the saved test logits on
    ``K``; otherwise the fit belongs to another kernel. Returns (the kGLM with those weights,
    the saved test logits (M, c_out), the recomputed ones K W^T + b in float64).
    """
    fit = read_npz(npz_path, ("coef", "intercept", "test_logits"), what="kGLM file")
    coef, intercept = fit["coef"], fit["intercept"]
    if coef.shape != (c_out, n_train) or intercept.shape != (c_out,):
        raise InputError(f"{npz_path}: coef {coef.shape} and intercept {intercept.shape}, expected "
                         f"({c_out}, {n_train}) and ({c_out},) for this data bundle")
    glm = KernelGLM.from_weights(coef, intercept)
    saved = fit["test_logits"].astype(np.float64)
    logits = np.concatenate([glm.decision_function(K[i:i + ROW_CHUNK]) for i in range(0, len(K), ROW_CHUNK)])
    if saved.shape != logits.shape or not np.allclose(
            logits, saved, rtol=1e-6, atol=1e-6 * (1 + np.abs(logits).max())):
        raise InputError(f"{npz_path}: its W and b do not reproduce its test logits on {kernel_path} "
                         "(the kGLM was fitted on another kernel)")
    return glm, saved, logits
