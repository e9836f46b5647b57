"""High-level steps of the attribution benchmark, in the order a workflow stage calls them.

1. :func:`run_subset` — one job per subset j: draw subset j, train on it, return its test
   margins (store the dict with ``atomic_savez``).
2. :func:`stack_subsets` — gather the M subset results into ``masks`` (M, N) and
   ``outputs`` (M, n_test).
3. :func:`kernel_attributions` — per kernel: fit the kGLM, return kGLM attribution and raw
   similarity, scores (n_test, N) and self-influence (N,); :func:`stored_kglm_attributions`
   does the scores from a kGLM the surrogate stage already fitted (its saved W and b).
4. :func:`gradient_attributions` — per experiment: retrain the full-data model with
   checkpoints (:func:`checkpointed_run`, bit-identical to ``train_stage``'s model for the same
   seed on the same device) and compute
   TracIn-CP, Grad-Dot, Grad-Cos and TRAK scores and self-influences.
5. :func:`lds_table` / :func:`auc_table` — LDS of every method against the subset outputs,
   and mislabel-detection AUC of every method's self-influence (on the noisy-label twin of
   the experiment, see :func:`ntkbench.attribution.mislabel.mislabel_bundle`).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from numpy.typing import ArrayLike, NDArray

from ntkbench.attribution import methods as M
from ntkbench.attribution.lds import compute_lds
from ntkbench.attribution.mislabel import detection_auc
from ntkbench.attribution.retrain import (TrainedRun, default_checkpoint_epochs, retrain_subset, subset_model_seed,
                                          train_with_checkpoints)
from ntkbench.attribution.subsets import subset_mask
from ntkbench.config import schema_default
from ntkbench.data import DataBundle

#: TracIn-CP checkpoints: the config schema's ``attribution.num_checkpoints`` default.
NUM_CHECKPOINTS: int = schema_default("attribution", "num_checkpoints")

__all__ = ["run_subset", "stack_subsets", "kernel_attributions", "stored_kglm_attributions", "checkpointed_run",
           "gradient_attributions", "seed_ensemble", "lds_table", "auc_table"]


def run_subset(bundle: DataBundle, model_spec: dict[str, Any], train_cfg: dict[str, Any], index: int,
               fraction: float = 0.5, subset_seed: int = 0, seed: int = 0, seed_scheme: str = "same",
               device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train subset ``index`` and return :func:`retrain_subset`'s dict plus ``mask`` (N,) bool,
    ``index``, ``fraction``, ``subset_seed``. ``seed`` is the experiment's training seed; the
    subset model's own seed follows ``seed_scheme`` (:func:`subset_model_seed`)."""
    mask = subset_mask(len(bundle.train), fraction, subset_seed, index)
    out = retrain_subset(bundle, mask, model_spec, train_cfg, subset_model_seed(seed, index, seed_scheme), device)
    return {**out, "mask": mask, "index": int(index), "fraction": float(fraction), "subset_seed": int(subset_seed)}


def stack_subsets(results: Sequence[Mapping[str, Any]]
                  ) -> tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.int64]]:
    """``(masks (M, N), outputs (M, n_test), indices (M,))`` from subset results (dicts or loaded
    ``.npz`` files with ``mask``, ``margins`` and ``index``); checks shapes and distinct indices."""
    if not results:
        raise ValueError("no subset results to stack")
    masks = np.stack([np.asarray(r["mask"], dtype=bool) for r in results])
    outputs = np.stack([np.asarray(r["margins"], dtype=np.float64) for r in results])
    indices = np.array([int(r["index"]) for r in results], dtype=np.int64)
    if len(set(indices.tolist())) != len(indices):
        raise ValueError(f"subset indices repeat: {sorted(indices.tolist())}")
    if not np.all(np.isfinite(outputs)):
        raise ValueError("a subset model produced non-finite margins (training diverged?)")
    return masks, outputs, indices


def kernel_attributions(K_train_train: ArrayLike, K_test_train: ArrayLike, y_train: ArrayLike, y_test: ArrayLike,
                        kglm_cfg: Mapping[str, Any] | None = None, signed_similarity: bool = False
                        ) -> tuple[dict[str, NDArray[np.float64]], dict[str, NDArray[np.float64]], Any]:
    """Fit the kGLM (``KernelGLM(**kglm_cfg)`` on true labels, as the surrogate stage does with
    ``target: labels``) and return ``(scores, self_influence, glm)`` with keys ``"kglm"`` and
    ``"kernel-sim"``: scores (n_test, N), self-influence (N,)."""
    from ntkbench.surrogate import KernelGLM

    cfg = dict(kglm_cfg or {})
    cfg.pop("target", None)
    Ktt = np.asarray(K_train_train, dtype=np.float64)
    Kte = np.asarray(K_test_train, dtype=np.float64)
    ytr, yte = np.asarray(y_train).astype(np.int64), np.asarray(y_test).astype(np.int64)
    glm = KernelGLM.from_config(cfg).fit(Ktt, ytr)
    scores = {"kglm": M.kglm_scores(glm, Kte, yte),
              "kernel-sim": M.kernel_similarity_scores(Kte, *((yte, ytr) if signed_similarity else ()))}
    diag = np.diag(Ktt)
    selfinf = {"kglm": M.kglm_self_influence(glm, diag, ytr), "kernel-sim": M.kernel_self_similarity(diag)}
    return scores, selfinf, glm


def stored_kglm_attributions(coef: ArrayLike, intercept: ArrayLike, K_test_train: ArrayLike, y_test: ArrayLike,
                             y_train: ArrayLike | None = None, signed_similarity: bool = False
                             ) -> dict[str, NDArray[np.float64]]:
    """Scores (n_test, N) of ``"kglm"`` and ``"kernel-sim"`` from an already fitted kGLM's
    ``coef`` (C_out, N) and ``intercept`` (C_out,) (in units of the unscaled kernel, as
    :class:`ntkbench.surrogate.KernelGLM` stores them) and the test × train kernel."""
    glm = SimpleNamespace(coef_=np.asarray(coef, dtype=np.float64), intercept_=np.asarray(intercept, dtype=np.float64))
    if glm.coef_.ndim != 2 or glm.intercept_.shape != (glm.coef_.shape[0],):
        raise ValueError(f"coef must be (C_out, N) and intercept (C_out,), got {glm.coef_.shape} and "
                         f"{glm.intercept_.shape}")
    if signed_similarity and y_train is None:
        raise ValueError("signed similarity needs the training labels")
    yte = np.asarray(y_test).astype(np.int64)
    sim_labels = (yte, np.asarray(y_train).astype(np.int64)) if signed_similarity else ()
    return {"kglm": M.kglm_scores(glm, K_test_train, yte), "kernel-sim": M.kernel_similarity_scores(K_test_train, *sim_labels)}


def checkpointed_run(bundle: DataBundle, model_spec: dict[str, Any], train_cfg: dict[str, Any], seed: int,
                     device: str | torch.device = "cpu", num_checkpoints: int = NUM_CHECKPOINTS, tracin: bool = True) -> TrainedRun:
    """The experiment's network of training seed ``seed``, retrained exactly as the train stage
    trains it, with ``num_checkpoints`` evenly spaced epoch-end checkpoints for TracIn-CP (the
    last is the final model); none when ``tracin`` is false."""
    epochs = int(train_cfg.get("epochs", 1))
    return train_with_checkpoints(bundle, model_spec, train_cfg, seed, device,
                                  default_checkpoint_epochs(epochs, num_checkpoints) if tracin else ())


def seed_ensemble(bundle: DataBundle, model_spec: dict[str, Any], train_cfg: dict[str, Any], seed: int,
                  count: int, weight: float, device: str | torch.device = "cpu", first: nn.Module | None = None
                  ) -> list[tuple[dict[str, torch.Tensor], float]]:
    """dattri's TracIn "checkpoints": the final weights of ``count`` full-data networks of
    training seeds ``seed, seed + 1, ...`` (``first``, if given, is seed ``seed``'s, already
    trained), each with the fixed ``weight``, as ``(state_dict, weight)`` pairs."""
    states = []
    for e in range(int(count)):
        net = first if (e == 0 and first is not None) else train_with_checkpoints(
            bundle, model_spec, train_cfg, seed + e, device).model
        states.append(({k: v.detach().clone() for k, v in net.state_dict().items()}, float(weight)))
    return states


def gradient_attributions(bundle: DataBundle, model_spec: dict[str, Any], train_cfg: dict[str, Any], seed: int,
                          device: str | torch.device = "cpu", num_checkpoints: int = NUM_CHECKPOINTS,
                          methods: Sequence[str] = M.GRADIENT_METHODS, proj_dim: int = M.TRAK_PROJ_DIM,
                          proj_seed: int = M.TRAK_PROJ_SEED, proj_type: str = M.TRAK_PROJ_TYPE,
                          ridge: float = M.TRAK_RIDGE, trak_ensemble: int | Sequence[int] = M.TRAK_ENSEMBLE,
                          batch_size: int = M.BATCH_SIZE, self_influence: bool = True, scores: bool = True,
                          run: TrainedRun | None = None, tracin_checkpoints: Sequence[Any] | None = None,
                          trak_members: Sequence[Mapping[str, torch.Tensor]] | None = None,
                          grad_proj_dim: int | None = None
                          ) -> tuple[dict[str, NDArray[np.float64]], dict[str, NDArray[np.float64]]]:
    """Scores (n_test, N) and self-influence (N,) of the loss-gradient methods for the model of
    training seed ``seed`` (either dict is empty when ``scores`` / ``self_influence`` is false).

    TracIn-CP uses ``num_checkpoints`` evenly spaced epoch ends (the last is the final model)
    with the optimizer's learning rate at each, unless ``tracin_checkpoints`` gives its
    ``(state_dict, weight)`` pairs (e.g. :func:`seed_ensemble`); pass ``run`` (from
    :func:`checkpointed_run`) to reuse a run already trained. TRAK's ensemble: an int k adds
    full-data models of seeds ``seed + 1, ...`` up to k members (one ``"trak"`` entry); a list
    of k gives ``"trak-k"`` entries over the first k of ``trak_members`` (state dicts, e.g. the
    LDS subset networks as dattri's TRAK uses its half-data models) or of the seed ensemble.
    ``grad_proj_dim`` projects the loss gradients of TracIn, Grad-Dot and Grad-Cos."""
    if run is None:
        run = checkpointed_run(bundle, model_spec, train_cfg, seed, device, num_checkpoints,
                               "tracin" in methods and tracin_checkpoints is None)
    elif "tracin" in methods and tracin_checkpoints is None and not run.checkpoints:
        raise ValueError("TracIn-CP needs a run with checkpoints")
    ensembles = None if isinstance(trak_ensemble, (int, np.integer)) else [int(k) for k in trak_ensemble]
    size = int(trak_ensemble) if ensembles is None else max(ensembles)
    if "trak" not in methods:
        trak_models: list[Any] = [run.model]
    elif trak_members is not None:
        if len(trak_members) < size:
            raise ValueError(f"TRAK ensemble of {size} members, but {len(trak_members)} member networks given")
        trak_models = list(trak_members[:size])
    else:
        trak_models = [run.model, *[train_with_checkpoints(bundle, model_spec, train_cfg, seed + e, device).model
                                    for e in range(1, size)]]
    kw = dict(methods=methods, proj_dim=proj_dim, proj_seed=proj_seed, proj_type=proj_type, ridge=ridge,
              trak_models=trak_models, batch_size=batch_size, device=device,
              loss=train_cfg.get("loss", "cross_entropy"), grad_proj_dim=grad_proj_dim, trak_ensembles=ensembles)
    checkpoints = run.checkpoints if tracin_checkpoints is None else list(tracin_checkpoints)
    tr, te = bundle.train, bundle.test
    out = M.gradient_method_scores(run.model, te.x, te.y, tr.x, tr.y, checkpoints, **kw) if scores else {}
    selfinf = M.gradient_method_self_influence(run.model, tr.x, tr.y, checkpoints, **kw) if self_influence else {}
    return out, selfinf


def lds_table(scores: Mapping[str, ArrayLike], masks: ArrayLike, outputs: ArrayLike, **columns: Any) -> pd.DataFrame:
    """One row per method: ``method``, ``lds``, ``lds_sem``, ``lds_n_valid``, ``lds_n_test``,
    ``lds_n_subsets`` and any constant ``columns`` (e.g. ``experiment=..., kernel=...``)."""
    rows = [{**columns, "method": name, **compute_lds(s, masks, outputs).as_dict()} for name, s in scores.items()]
    return pd.DataFrame(rows)


def auc_table(self_influence: Mapping[str, ArrayLike], flipped: ArrayLike, **columns: Any) -> pd.DataFrame:
    """One row per method: ``method``, ``auc`` (ROC AUC), ``n_flipped`` and ``columns``."""
    f = np.asarray(flipped).astype(bool)
    return pd.DataFrame([{**columns, "method": name, "auc": detection_auc(s, f), "n_flipped": int(f.sum())}
                         for name, s in self_influence.items()])
