"""Stages of the spectral analysis (SPEC §4): Toy Models of Superposition and modular addition.

TMS: train per (m, S) run -> flattened-eNTK eigen-analysis per run (all betas) -> table and
figures. Modular addition: train with checkpoints -> class-averaged spectra at every
checkpoint, and the full flattened eNTK at the final one -> CSVs and figures. Cliffs are
detected here, once, and handed to the figures.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ntkbench import models
from ntkbench.data.modadd import make_modadd_data
from ntkbench.data.tms import importance_weights, make_tms_data
from ntkbench.plots.spectral import (
    plot_modadd_full_spectrum,
    plot_modadd_grokking,
    plot_modadd_heatmaps,
    plot_modadd_spectra,
    plot_tms_heatmaps,
    plot_tms_spectra,
)
from ntkbench.spectral.cliffs import CliffParams, detect_cliffs, format_positions
from ntkbench.spectral.modadd import (
    CLIFF_TABLE_COLUMNS,
    OVERLAP_TABLE_COLUMNS,
    checkpoint_spectra,
    cliff_heatmaps,
    cliff_table,
    full_entk_top,
    overlap_table,
)
from ntkbench.spectral.tms import n_represented, tms_spectra
from ntkbench.stages.common import read_npz, write_csv
from ntkbench.integrity import load_torch, save_torch
from ntkbench.training.health import check_training
from ntkbench.training.modadd import train_modadd
from ntkbench.training.tms import train_tms
from ntkbench.utils import atomic_savez, get_logger, resolve_device, seed_everything

log = get_logger(__name__)

__all__ = [
    "tms_train_stage",
    "tms_spectrum_stage",
    "tms_report_stage",
    "modadd_train_stage",
    "modadd_spectra_stage",
    "modadd_full_stage",
    "modadd_report_stage",
]


# ----------------------------------------------------------------------------- TMS
def tms_train_stage(run: dict[str, Any], cfg: dict[str, Any], device: str, out_model: str | Path,
                    out_curve: str | Path) -> None:
    """Train one TMS model (m, S) on its fixed data set; save weights with the data and the curve."""
    dev = resolve_device(device)
    n = int(cfg["n_features"])
    x = make_tms_data(n, run["sparsity"], int(cfg["num_points"]), seed=int(cfg["data_seed"]))
    seed_everything(int(cfg["seed"]))
    spec = {"name": "tms", "n_features": n, "n_hidden": int(run["m"])}
    model = models.build(spec)
    log.info("TMS m=%d S=%g: %d points, %d features, %d steps on %s", run["m"], run["sparsity"],
             len(x), n, cfg["steps"], dev)
    curve = train_tms(model, x, importance_weights(n, cfg["importance"]).float(), lr=float(cfg["lr"]),
                      steps=int(cfg["steps"]), device=dev)
    check_training(model, curve, loss_column="loss", allow_failure=bool(cfg["allow_divergence"]),
                   what=f"TMS training m={run['m']}, S={run['sparsity']:g}",
                   hint="lower spectral.tms.lr, or set spectral.tms.allow_divergence: true to keep it")
    norms = model.feature_norms().cpu()
    log.info("final loss %.4g; (WᵀW)_ii >= 0.75 for %d of %d features", curve["loss"].iloc[-1],
             int((norms >= 0.75).sum()), n)
    models.save_checkpoint(out_model, model.cpu(), spec, data=x, run=dict(run),
                           importance=float(cfg["importance"]))
    write_csv(curve, out_curve)


def tms_spectrum_stage(model_path: str | Path, cfg: dict[str, Any], device: str, out_npz: str | Path) -> None:
    """Top eigenpairs of the flattened eNTK for every β; store spectra and alignment heatmaps."""
    dev = resolve_device(device)
    model, ckpt = models.load_checkpoint(model_path, device=dev)
    x = ckpt["data"].float()
    values, heatmaps, scores, timing = [], [], [], []
    n_flat = x.shape[0] * x.shape[1]
    spectra = tms_spectra(model, x, cfg["betas"], importance=float(cfg["importance"]), top_k=int(cfg["top_k"]),
                          device=dev)
    for beta, sp in zip(cfg["betas"], spectra):
        log.info("β=%g: flattened eNTK %d x %d (P=%d): Jacobian %.2fs, top-%d eigenpairs via %s %.2fs; "
                 "alignment %.2f, mean best |cos| %.3f", beta, n_flat, n_flat, sp.eig.info.get("gram_size", -1),
                 sp.jacobian_seconds, len(sp.eig), sp.eig.method, sp.eig.seconds,
                 sp.scores["alignment"], sp.scores["mean_best_cos"])
        values.append(sp.eig.values)
        heatmaps.append(sp.heatmap)
        scores.append(sp.scores)
        timing.append([sp.jacobian_seconds, sp.eig.seconds])
    w = model.W.detach().double().cpu()
    atomic_savez(out_npz, betas=np.array(cfg["betas"], dtype=float), eigenvalues=np.stack(values),
              heatmaps=np.stack(heatmaps).astype(np.float32), seconds=np.array(timing),
              feature_norms=(w * w).sum(0).numpy(),
              n_represented=np.array(n_represented(model, cfg["represented_threshold"])),
              scores=np.array(json.dumps(scores)), m=np.array(ckpt["run"]["m"]),
              sparsity=np.array(ckpt["run"]["sparsity"]))


def tms_report_stage(run_paths: Sequence[str | Path], cfg: dict[str, Any], out_csv: str | Path,
                     out_spectra: str | Path, out_heatmaps: str | Path) -> pd.DataFrame:
    """tms.csv (one row per (m, S, β)) and the spectrum and alignment figures."""
    params = CliffParams.from_config(cfg["cliffs"])
    rows, runs = [], []
    for path in run_paths:
        run = read_npz(path)
        scores = json.loads(str(run["scores"]))
        run["cliffs"] = []
        for b, beta in enumerate(run["betas"]):
            found = detect_cliffs(run["eigenvalues"][b], params)
            run["cliffs"].append(found)
            ev = run["eigenvalues"][b]
            rows.append({"m": int(run["m"]), "sparsity": float(run["sparsity"]), "beta": float(beta),
                         "n_represented": int(run["n_represented"]), "cliffs": format_positions(found),
                         "alignment": scores[b]["alignment"], "mean_best_cos": scores[b]["mean_best_cos"],
                         "diagonal_fraction": scores[b]["diagonal_fraction"],
                         "cliff_ratios": ";".join(f"{c.ratio:.3g}" for c in found),
                         "drop_after_n": _drop_after(ev, int(cfg["n_features"])),
                         "eig_seconds": float(run["seconds"][b][1])})
        runs.append(run)
    table = pd.DataFrame(rows)
    write_csv(table, out_csv)
    for row in rows:
        log.info("m=%d S=%g β=%g: %d represented, cliffs [%s], alignment %.2f, mean best |cos| %.3f",
                 row["m"], row["sparsity"], row["beta"], row["n_represented"], row["cliffs"],
                 row["alignment"], row["mean_best_cos"])
    plot_tms_spectra(runs, cfg, out_spectra)
    plot_tms_heatmaps(runs, cfg, out_heatmaps)
    return table


def _drop_after(ev: np.ndarray, n: int) -> float:
    """λ_n / λ_{n+1} (1-based): the drop right after the n-th eigenvalue (NaN if out of range)."""
    return float(ev[n - 1] / ev[n]) if ev.size > n and ev[n] > 0 else float("nan")


# ----------------------------------------------------------------------------- modular addition
def modadd_train_stage(cfg: dict[str, Any], seed: int, device: str, out_checkpoints: str | Path,
                       out_curve: str | Path) -> None:
    """Train the modular-addition MLP; save every checkpoint (one file) and the per-epoch curve."""
    dev = resolve_device(device)
    data = make_modadd_data(int(cfg["p"]), float(cfg["train_fraction"]), int(cfg["split_seed"]))
    seed_everything(int(seed))
    spec = {"name": "modmlp", "p": int(cfg["p"]), "width": int(cfg["width"])}
    model = models.build(spec)
    log.info("modular addition p=%d width=%d: %d train / %d test points, %d parameters, seed %d, %s",
             data.p, cfg["width"], len(data.train_idx), len(data.test_idx),
             sum(q.numel() for q in model.parameters()), seed, dev)
    curve, states = train_modadd(model, data, lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]),
                                 epochs=int(cfg["epochs"]), checkpoint_every=int(cfg["checkpoint_every"]),
                                 device=dev)
    with torch.no_grad():
        train_out = model(data.x[data.train_idx].to(dev))
    check_training(model, curve, train_out, data.y[data.train_idx], data.p,
                   allow_failure=bool(cfg["allow_divergence"]), what=f"modular-addition training p={data.p}, seed {seed}",
                   hint="lower the learning rate, or set allow_divergence: true in the modadd block to keep it")
    save_torch(out_checkpoints, {"spec": spec, "seed": int(seed), "states": states,
                                 "train_idx": torch.from_numpy(data.train_idx),
                                 "data": {"p": data.p, "train_fraction": float(cfg["train_fraction"]),
                                          "split_seed": int(cfg["split_seed"])}})
    write_csv(curve, out_curve)


def _load_modadd(path: str | Path, device: torch.device):
    ckpt = load_torch(path, what="training checkpoints")
    data = make_modadd_data(ckpt["data"]["p"], ckpt["data"]["train_fraction"], ckpt["data"]["split_seed"])
    model = models.build(ckpt["spec"]).to(device)
    return ckpt, data, model


def modadd_spectra_stage(checkpoints: str | Path, cfg: dict[str, Any], device: str, out_npz: str | Path) -> None:
    """Class-averaged eNTK (total and per layer) on all p² points at every checkpoint; top-k eigenpairs."""
    dev = resolve_device(device)
    ckpt, data, model = _load_modadd(checkpoints, dev)
    # null = 4p + 4: both cliffs (2·2(p−1) modes), the top mode and a margin
    n_vectors = 4 * data.p + 4 if cfg["store_vectors"] is None else cfg["store_vectors"]
    n_vectors = min(int(n_vectors), int(cfg["top_k"]), data.p ** 2)
    start = time.perf_counter()
    res = checkpoint_spectra(model, data.x.to(dev), ckpt["states"], top_k=int(cfg["top_k"]),
                             n_vectors=n_vectors, device=dev, log=log)
    save_checkpoint_spectra(out_npz, res, data, start)


def save_checkpoint_spectra(out_npz: str | Path, res: dict[str, Any], data: Any, start: float) -> None:
    """Write :func:`ntkbench.spectral.modadd.checkpoint_spectra`'s result with the data's pairs and p."""
    log.info("%d checkpoints: kernels %.1fs, eigendecompositions %.1fs, total %.1fs", len(res["epochs"]),
             res["kernel_seconds"], res["eig_seconds"], time.perf_counter() - start)
    atomic_savez(out_npz, epochs=res["epochs"], layers=res["layers"], eigenvalues=res["eigenvalues"],
                 eigenvectors=res["eigenvectors"], pairs=data.pairs, p=np.array(data.p),
                 kernel_seconds=np.array(res["kernel_seconds"]), eig_seconds=np.array(res["eig_seconds"]))


def modadd_full_stage(checkpoints: str | Path, cfg: dict[str, Any], device: str, out_npz: str | Path) -> None:
    """Top eigenpairs of the full flattened eNTK ((p²·p)²) at the final checkpoint, matrix-free."""
    dev = resolve_device(device)
    ckpt, data, model = _load_modadd(checkpoints, dev)
    epoch = max(ckpt["states"])
    model.load_state_dict(ckpt["states"][epoch])
    model.eval()
    dim = data.p ** 3
    k = min(int(cfg["full_top_k"]), dim - 2)
    res = full_entk_top(model, data.x.to(dev), k, device=dev)
    log.info("full flattened eNTK %d x %d at epoch %d: top-%d eigenpairs by Lanczos in %.1fs (%d products)",
             dim, dim, epoch, k, res.seconds, res.info["matvecs"])
    atomic_savez(out_npz, epoch=np.array(epoch), eigenvalues=res.values,
              eigenvectors=res.vectors[:, : min(k, 2 * data.p)].astype(np.float32),
              seconds=np.array(res.seconds), matvecs=np.array(res.info["matvecs"]))


def modadd_report_stage(seeds: Sequence[int], curve_paths: Sequence[str | Path],
                        spectra_paths: Sequence[str | Path], full_paths: Sequence[str | Path],
                        cfg: dict[str, Any], outputs: dict[str, str | Path]) -> dict[str, pd.DataFrame]:
    """Every CSV and figure of one modular-addition experiment (all seeds; a ``seed`` column)."""
    params = CliffParams.from_config(cfg["cliffs"])
    curves, spectra_rows, cliff_rows, overlap_rows, full_rows = [], [], [], [], []
    figures: dict[int, dict[str, Any]] = {}
    for seed, curve_path, spec_path, full_path in zip(seeds, curve_paths, spectra_paths, full_paths):
        curve = pd.read_csv(curve_path)
        curves.append(curve.assign(seed=seed))
        spectra = read_npz(spec_path)
        p = int(spectra["p"])
        ev = spectra["eigenvalues"]
        T, L, K = ev.shape
        spectra_rows.append(pd.DataFrame({
            "epoch": np.repeat(spectra["epochs"], L * K),
            "layer": np.tile(np.repeat(spectra["layers"], K), T),
            "index": np.tile(np.arange(K), T * L),
            "eigenvalue": ev.ravel(),
            "seed": seed,
        }))
        cliff_rows.append(pd.DataFrame(cliff_table(spectra, spectra["pairs"], p, params),
                                       columns=list(CLIFF_TABLE_COLUMNS)).assign(seed=seed))
        overlaps = pd.DataFrame(overlap_table(spectra, spectra["pairs"], p, params),
                                columns=list(OVERLAP_TABLE_COLUMNS)).assign(seed=seed)
        overlaps = overlaps.merge(curve[["epoch", "train_acc", "test_acc"]], on="epoch", how="left")
        overlap_rows.append(overlaps)
        full = read_npz(full_path)
        full_cliffs = detect_cliffs(full["eigenvalues"], params)
        full_rows.append(pd.DataFrame({"epoch": int(full["epoch"]), "index": np.arange(full["eigenvalues"].size),
                                       "eigenvalue": full["eigenvalues"], "seed": seed}))
        # heatmaps at initialisation, at the grokking epoch and at the end
        epochs = [int(e) for e in spectra["epochs"]]
        grok = _grok_epoch(curve, epochs)
        chosen = list(dict.fromkeys([epochs[0], *( [grok] if grok is not None else []), epochs[-1]]))
        total = list(spectra["layers"]).index("total")
        heat = {e: cliff_heatmaps(spectra["eigenvectors"][epochs.index(e), total], spectra["pairs"], p)
                for e in chosen}
        figures[seed] = {"spectra": spectra, "curve": curve, "heatmaps": heat, "grok": grok,
                         "full": full, "full_cliffs": full_cliffs, "overlaps": overlaps}
        log.info("seed %d: grokking (test acc >= 0.5) at epoch %s; full eNTK cliffs [%s]", seed, grok,
                 format_positions(full_cliffs))
    tables = {
        "training_curve": pd.concat(curves, ignore_index=True),
        "spectra": pd.concat(spectra_rows, ignore_index=True),
        "cliffs": pd.concat(cliff_rows, ignore_index=True),
        "overlap": pd.concat(overlap_rows, ignore_index=True),
        "full_spectrum": pd.concat(full_rows, ignore_index=True),
    }
    for name, df in tables.items():
        write_csv(df, outputs[name])
    _log_summary(tables, params)
    first = figures[seeds[0]]
    ev = first["spectra"]["eigenvalues"]  # (checkpoints, layers, modes)
    first_last = [(detect_cliffs(ev[0, l], params), detect_cliffs(ev[-1, l], params)) for l in range(ev.shape[1])]
    plot_modadd_spectra(first["spectra"], first["curve"], first_last, outputs["spectra_figure"], seed=seeds[0])
    plot_modadd_grokking(tables["overlap"], tables["training_curve"], outputs["grokking_figure"], params)
    plot_modadd_heatmaps(first["heatmaps"], int(first["spectra"]["p"]), first["curve"], outputs["heatmap_figure"],
                         seed=seeds[0])
    plot_modadd_full_spectrum(first["full"], first["full_cliffs"], int(first["spectra"]["p"]),
                              outputs["full_figure"], seed=seeds[0])
    return tables


def _grok_epoch(curve: pd.DataFrame, epochs: Sequence[int], level: float = 0.5) -> int | None:
    """The first checkpoint epoch whose test accuracy is at least ``level``."""
    acc = curve.set_index("epoch")["test_acc"]
    for e in epochs:
        if e in acc.index and acc.loc[e] >= level:
            return int(e)
    return None


def _log_summary(tables: dict[str, pd.DataFrame], params: CliffParams) -> None:
    ov = tables["overlap"]
    tot = ov[(ov["layer"] == "total") & (ov["block"] == "cliff2")]
    for row in tot.itertuples():
        log.info("seed %d epoch %d: test acc %.3f, cliff-2 drop %.3f (detected %s), overlap a+b %.3f, a-b %.3f",
                 row.seed, row.epoch, row.test_acc, row.drop_ratio, row.detected, row.overlap_sum, row.overlap_diff)
