"""Stages of the modular-addition transformer experiment (SPEC §4.2, last bullet; issue 15).

train (mini-batch AdamW, checkpoints) -> class-averaged eNTK spectra per layer group at every
checkpoint -> top eigenpairs of the full flattened eNTK at the final checkpoint -> CSVs and
figures. Cliffs are detected, never assumed: the report lists the blocks found at every
checkpoint and relates them to the grokking epoch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ntkbench import models
from ntkbench.data.modadd import make_modadd_data
from ntkbench.models.transformer import layer_group, tf_tokens
from ntkbench.plots.spectral import plot_modadd_full_spectrum
from ntkbench.plots.spectral_tf import plot_tf_alignment, plot_tf_grokking, plot_tf_spectra
from ntkbench.spectral.cliffs import CliffParams, detect_cliffs, format_positions
from ntkbench.spectral.modadd import CLIFF_TABLE_COLUMNS, cliff_table, full_entk_top
from ntkbench.spectral.modadd_tf import (
    ALIGNMENT_TABLE_COLUMNS,
    WINDOW_TABLE_COLUMNS,
    block_alignment,
    default_windows,
    grouped_checkpoint_spectra,
    window_table,
)
from ntkbench.stages.common import read_npz, write_csv
from ntkbench.stages.spectral import save_checkpoint_spectra
from ntkbench.integrity import load_torch, save_torch
from ntkbench.training.health import check_training
from ntkbench.training.modadd_tf import train_modadd_tf
from ntkbench.utils import atomic_savez, get_logger, resolve_device, seed_everything

log = get_logger(__name__)

__all__ = ["tf_train_stage", "tf_spectra_stage", "tf_full_stage", "tf_report_stage", "grok_epoch"]

_MODEL_KEYS = ("p", "d_model", "d_mlp", "heads", "layer_norm", "equals_token")


def _data(cfg: dict[str, Any]):
    data = make_modadd_data(int(cfg["p"]), float(cfg["train_fraction"]), int(cfg["split_seed"]))
    return data, tf_tokens(torch.from_numpy(data.pairs), data.p, bool(cfg["equals_token"]))


def tf_train_stage(cfg: dict[str, Any], device: str, out_checkpoints: str | Path, out_curve: str | Path) -> None:
    """Train the transformer; save every checkpoint (one file) and the per-epoch curve."""
    dev = resolve_device(device)
    data, tokens = _data(cfg)
    seed_everything(int(cfg["seed"]))
    spec = {"name": "modadd_transformer", **{k: cfg[k] for k in _MODEL_KEYS}}
    model = models.build(spec)
    log.info("modular-addition transformer %s: %d train / %d test points, %d parameters, %s", spec,
             len(data.train_idx), len(data.test_idx), sum(q.numel() for q in model.parameters()), dev)
    curve, states = train_modadd_tf(model, tokens, data.y, data.train_idx, data.test_idx, lr=float(cfg["lr"]),
                                    weight_decay=float(cfg["weight_decay"]), betas=tuple(cfg["betas"]),
                                    batch_size=int(cfg["batch_size"]), epochs=int(cfg["epochs"]),
                                    checkpoint_every=int(cfg["checkpoint_every"]), seed=int(cfg["seed"]),
                                    device=dev)
    with torch.no_grad():
        train_out = model(tokens[data.train_idx].to(dev))
    check_training(model, curve, train_out, data.y[data.train_idx], data.p,
                   allow_failure=bool(cfg["allow_divergence"]), what=f"modular-addition transformer p={data.p}",
                   hint="lower lr, or set allow_divergence: true in spectral.modadd_tf to keep it")
    save_torch(out_checkpoints, {"spec": spec, "states": states, "train_idx": torch.from_numpy(data.train_idx),
                                 "data": {k: cfg[k] for k in ("p", "train_fraction", "split_seed", "equals_token")}})
    write_csv(curve, out_curve)


def _load(path: str | Path, device: torch.device):
    ckpt = load_torch(path, what="training checkpoints")
    data, tokens = _data(ckpt["data"])
    return ckpt, data, tokens, models.build(ckpt["spec"]).to(device)


def tf_spectra_stage(checkpoints: str | Path, cfg: dict[str, Any], device: str, out_npz: str | Path) -> None:
    """Class-averaged eNTK per layer group (embed, attn, mlp, unembed) and total on all p²
    points at every checkpoint; top-k eigenpairs."""
    dev = resolve_device(device)
    ckpt, data, tokens, model = _load(checkpoints, dev)
    n_vectors = 4 * data.p + 4 if cfg["store_vectors"] is None else int(cfg["store_vectors"])
    top_k = min(int(cfg["top_k"]), data.p ** 2)
    n_vectors = min(n_vectors, top_k)
    start = time.perf_counter()
    res = grouped_checkpoint_spectra(model, tokens.to(dev), ckpt["states"], layer_group, top_k=top_k,
                                     n_vectors=n_vectors, device=dev, log=log)
    save_checkpoint_spectra(out_npz, res, data, start)


def tf_full_stage(checkpoints: str | Path, cfg: dict[str, Any], device: str, out_npz: str | Path) -> None:
    """Top eigenpairs of the full class-major flattened eNTK ((p²·p)²) at the final checkpoint,
    matrix-free (one VJP + one JVP per product, torch.func through the whole transformer)."""
    dev = resolve_device(device)
    ckpt, data, tokens, model = _load(checkpoints, dev)
    epoch = max(ckpt["states"])
    model.load_state_dict(ckpt["states"][epoch])
    model.eval()
    dim = data.p ** 3
    k = min(int(cfg["full_top_k"]), dim - 2)
    res = full_entk_top(model, tokens.to(dev), k, device=dev)
    log.info("full flattened eNTK %d x %d at epoch %d: top-%d eigenpairs by Lanczos in %.1fs (%d products)",
             dim, dim, epoch, k, res.seconds, res.info["matvecs"])
    atomic_savez(out_npz, epoch=np.array(epoch), eigenvalues=res.values, seconds=np.array(res.seconds),
                 matvecs=np.array(res.info["matvecs"]))


def grok_epoch(curve: pd.DataFrame, level: float = 0.5) -> int | None:
    """The first epoch whose test accuracy is at least ``level`` (None if never)."""
    hit = curve[curve["test_acc"] >= level]
    return int(hit["epoch"].iloc[0]) if len(hit) else None


def _long_spectra(spectra: dict[str, Any]) -> pd.DataFrame:
    ev = spectra["eigenvalues"]
    T, L, K = ev.shape
    return pd.DataFrame({"epoch": np.repeat(spectra["epochs"], L * K),
                         "layer": np.tile(np.repeat(spectra["layers"], K), T),
                         "index": np.tile(np.arange(K), T * L), "eigenvalue": ev.ravel()})


def tf_report_stage(curve_path: str | Path, spectra_path: str | Path, full_path: str | Path, cfg: dict[str, Any],
                    outputs: dict[str, str | Path]) -> dict[str, pd.DataFrame]:
    """Every CSV and figure of one transformer experiment."""
    params = CliffParams.from_config(cfg["cliffs"])
    curve = pd.read_csv(curve_path)
    spectra = read_npz(spectra_path)
    full = read_npz(full_path)
    p, pairs = int(spectra["p"]), spectra["pairs"]
    windows = list(cfg["overlap_windows"] or default_windows(p))
    acc = curve[["epoch", "train_acc", "test_acc"]]
    cliffs = pd.DataFrame(cliff_table(spectra, pairs, p, params), columns=list(CLIFF_TABLE_COLUMNS))
    overlap = pd.DataFrame(window_table(spectra, pairs, p, windows), columns=list(WINDOW_TABLE_COLUMNS))
    epochs = [int(e) for e in spectra["epochs"]]
    grok = grok_epoch(curve, float(cfg["grok_level"]))
    grok_ckpt = next((e for e in epochs if grok is not None and e >= grok), None)
    chosen = list(dict.fromkeys([epochs[0], *([grok_ckpt] if grok_ckpt is not None else []), epochs[-1]]))
    heatmaps: dict[int, list] = {}
    align_rows = []
    for t, epoch in enumerate(epochs):
        for l, layer in enumerate(spectra["layers"]):
            res = block_alignment(spectra["eigenvectors"][t, l], spectra["eigenvalues"][t, l], pairs, p, params,
                                  fallback=windows[0])
            align_rows += [{"epoch": epoch, "layer": str(layer), **row} for row, _ in res]
            if layer == "total" and epoch in chosen:
                heatmaps[epoch] = res
    alignment = pd.DataFrame(align_rows, columns=list(ALIGNMENT_TABLE_COLUMNS))
    full_cliffs = detect_cliffs(full["eigenvalues"], params)
    tables = {
        "training_curve": curve,
        "spectra": _long_spectra(spectra),
        "cliffs": cliffs.merge(acc, on="epoch", how="left"),
        "overlap": overlap.merge(acc, on="epoch", how="left"),
        "alignment": alignment.merge(acc, on="epoch", how="left"),
        "full_spectrum": pd.DataFrame({"epoch": int(full["epoch"]), "index": np.arange(full["eigenvalues"].size),
                                       "eigenvalue": full["eigenvalues"]}),
    }
    for name, df in tables.items():
        write_csv(df, outputs[name])
    log.info("p=%d: test accuracy >= %.2f at epoch %s (checkpoint %s); full eNTK cliffs [%s]", p,
             cfg["grok_level"], grok, grok_ckpt, format_positions(full_cliffs))
    _log_summary(tables, windows)
    plot_tf_spectra(spectra, curve, cliffs, outputs["spectra_figure"], grok=grok)
    plot_tf_grokking(tables["overlap"], cliffs, curve, outputs["grokking_figure"], grok=grok)
    plot_tf_alignment(heatmaps, p, curve, outputs["heatmap_figure"])
    plot_modadd_full_spectrum(full, full_cliffs, p, outputs["full_figure"], seed=int(cfg["seed"]))
    return tables


def _log_summary(tables: dict[str, pd.DataFrame], windows: Sequence[int]) -> None:
    ov, cl = tables["overlap"], tables["cliffs"]
    for epoch, rows in ov[ov["layer"] == "total"].groupby("epoch"):
        found = cl[(cl["layer"] == "total") & (cl["epoch"] == epoch)]
        log.info("epoch %d: test acc %.3f; total-kernel cliffs at [%s]; sum-family overlap of top %s modes: %s",
                 epoch, rows["test_acc"].iloc[0], ";".join(str(e) for e in found["end"]), windows,
                 ", ".join(f"{v:.3f}" for v in rows["overlap_sum"]))
