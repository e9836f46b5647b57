"""Figures of the spectral stage (SPEC §4): TMS spectra and alignment heatmaps, modular-addition
spectra, Fourier heatmaps before/after the symmetry rotation, and the grokking figure.

Every figure states in its title and labels what is plotted, so it reads without the paper.
PNG files are written atomically (Agg backend).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
import pandas as pd

from ntkbench.plots import plt, save_figure
from ntkbench.spectral.cliffs import Cliff, CliffParams
from ntkbench.spectral.features import FAMILIES
from ntkbench.spectral.modadd import expected_cliffs

__all__ = [
    "plot_tms_spectra",
    "plot_tms_heatmaps",
    "plot_modadd_spectra",
    "plot_modadd_grokking",
    "plot_modadd_heatmaps",
    "plot_modadd_full_spectrum",
]

FIGURE_DPI = 130
FAMILY_LABELS = {"a": "a", "b": "b", "a+b": "a+b", "a-b": "a−b"}


def _mark_cliffs(ax: plt.Axes, cliffs: Sequence[Any], values: np.ndarray, color: str = "crimson") -> None:
    for c in cliffs:
        ax.axvline(c.position + 0.5, color=color, linestyle="--", linewidth=1)
        y = values[c.position - 1] if c.position - 1 < len(values) else values[-1]
        ax.annotate(f"{c.position}\n×{c.ratio:.3g}", (c.position + 0.5, y), xytext=(4, 4),
                    textcoords="offset points", fontsize=7, color=color)


# ----------------------------------------------------------------------------- TMS
def _tms_title(run: dict[str, Any], b: int) -> str:
    return (f"m={int(run['m'])}, S={float(run['sparsity']):g} ({int(run['n_represented'])} repr.), "
            f"β={float(run['betas'][b]):g}")


def plot_tms_spectra(runs: Sequence[dict[str, Any]], cfg: dict[str, Any], path: str | Path) -> None:
    """Grid (runs × β) of the top eigenvalues on a log scale with detected cliffs marked."""
    n_b = len(runs[0]["betas"])
    fig, axes = plt.subplots(len(runs), n_b, figsize=(4.2 * n_b, 3.0 * len(runs)), squeeze=False)
    n = int(cfg["n_features"])
    for r, run in enumerate(runs):
        for b in range(n_b):
            ax = axes[r, b]
            ev = run["eigenvalues"][b]
            idx = np.arange(1, ev.size + 1)
            ax.semilogy(idx, ev, ".-", markersize=3, linewidth=0.8, color="tab:blue")
            ax.axvline(n + 0.5, color="grey", linestyle=":", linewidth=1)
            ax.axvline(int(run["n_represented"]) + 0.5, color="tab:green", linestyle=":", linewidth=1)
            _mark_cliffs(ax, run["cliffs"][b], ev)
            ax.set_title(_tms_title(run, b), fontsize=9)
            ax.set_xlabel("eigenvalue index i")
            ax.set_ylabel(r"$\lambda_i$ (log scale)")
            ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], color="crimson", linestyle="--", label=r"detected cliff (position, drop $\lambda_i/\lambda_{i+1}$)"),
               plt.Line2D([], [], color="grey", linestyle=":", label=f"n = {n} features"),
               plt.Line2D([], [], color="tab:green", linestyle=":", label="# represented features ((WᵀW)_ii ≥ "
                          f"{cfg['represented_threshold']})")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"TMS: top-{runs[0]['eigenvalues'].shape[1]} eigenvalues of the flattened eNTK "
                 f"(N·C = {cfg['num_points']}·{n} rows, class-major), $g^c$ scaled by $I_c^{{\\beta/2}}$", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    save_figure(fig, path, dpi=FIGURE_DPI)


def plot_tms_heatmaps(runs: Sequence[dict[str, Any]], cfg: dict[str, Any], path: str | Path) -> None:
    """Grid (runs × β) of |⟨ẑ^a, ê_i⟩| (features × top eigenvectors) with the alignment scores."""
    n_b = len(runs[0]["betas"])
    fig, axes = plt.subplots(len(runs), n_b, figsize=(4.6 * n_b, 3.7 * len(runs)), squeeze=False)
    fig.subplots_adjust(hspace=0.6, wspace=0.3)
    im = None
    for r, run in enumerate(runs):
        scores = json.loads(str(run["scores"]))
        for b in range(n_b):
            ax = axes[r, b]
            h = run["heatmaps"][b]
            im = ax.imshow(h, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest",
                           extent=(0.5, h.shape[1] + 0.5, h.shape[0] - 0.5, -0.5))
            for c in run["cliffs"][b]:
                ax.axvline(c.position + 0.5, color="cyan", linestyle="--", linewidth=0.8)
            s = scores[b]
            ax.set_title(f"{_tms_title(run, b)}\none-to-one {s['alignment']:.2f}, "
                         f"mean best |cos| {s['mean_best_cos']:.2f}", fontsize=8.5)
            ax.set_xlabel("eNTK eigenvector i (by decreasing λ)")
            ax.set_ylabel("feature a (importance 0.8^a)" if cfg.get("importance") == 0.8 else "feature a")
    fig.colorbar(im, ax=axes, shrink=0.6, label="|cos(ground-truth feature ẑ^a, eigenvector ê_i)|")
    fig.suptitle("TMS: alignment of flattened-eNTK eigenvectors with ground-truth features "
                 "(dashed: detected cliffs)", fontsize=11)
    save_figure(fig, path, dpi=FIGURE_DPI)


# ----------------------------------------------------------------------------- modular addition
def _layer_title(layer: str) -> str:
    if layer == "total":
        return "total (all layers)"
    return layer if layer.startswith("layer") else f"parameters of {layer}"


def plot_modadd_spectra(spectra: dict[str, Any], curve: pd.DataFrame,
                        cliffs: Sequence[tuple[Sequence[Cliff], Sequence[Cliff]]], path: str | Path,
                        seed: int = 0) -> None:
    """Class-averaged eNTK spectra over training (colour = epoch), total and per layer, with the
    p-derived block boundaries and the cliffs the stage detected at the first and last
    checkpoints (``cliffs[layer index] = (first, last)``)."""
    p = int(spectra["p"])
    epochs = spectra["epochs"]
    layers = list(spectra["layers"])
    fig, axes = plt.subplots(1, len(layers) + 1, figsize=(4.8 * (len(layers) + 1), 4.3))
    fig.subplots_adjust(wspace=0.38)
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.Normalize(vmin=float(epochs.min()), vmax=float(epochs.max()))
    blocks = expected_cliffs(p)
    for l, layer in enumerate(layers):
        ax = axes[l + 1]
        for t, epoch in enumerate(epochs):
            ev = spectra["eigenvalues"][t, l]
            ax.semilogy(np.arange(1, ev.size + 1), ev / ev[0], color=cmap(norm(epoch)), linewidth=0.8, alpha=0.8)
        for name in ("cliff1", "cliff2"):
            ax.axvline(blocks[name][1] + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.axvline(1.5, color="grey", linestyle=":", linewidth=1)
        for t, style, found in ((0, "tab:purple", cliffs[l][0]), (len(epochs) - 1, "crimson", cliffs[l][1])):
            for c in found:
                ev = spectra["eigenvalues"][t, l]
                ax.plot([c.position + 0.5], [ev[c.position - 1] / ev[0]], "v", color=style, markersize=6)
        ax.set_title(f"class-averaged eNTK: {_layer_title(layer)}", fontsize=10)
        ax.set_xlabel("eigenvalue index i")
        ax.set_ylabel(r"$\lambda_i / \lambda_1$ (log scale)")
        ax.grid(alpha=0.3, which="both")
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes[1:], label="epoch", shrink=0.9)
    ax = axes[0]
    ax.plot(curve["epoch"], curve["train_acc"], label="train accuracy", color="tab:blue")
    ax.plot(curve["epoch"], curve["test_acc"], label="test accuracy", color="tab:orange")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color="tab:blue", label="train accuracy"),
               plt.Line2D([], [], color="tab:orange", label="test accuracy"),
               plt.Line2D([], [], color="grey", linestyle=":", label=f"expected block ends 1, {blocks['cliff1'][1]}, "
                          f"{blocks['cliff2'][1]} (from p)"),
               plt.Line2D([], [], color="tab:purple", marker="v", linestyle="", label=f"cliffs detected, epoch {int(epochs[0])}"),
               plt.Line2D([], [], color="crimson", marker="v", linestyle="", label=f"cliffs detected, epoch {int(epochs[-1])}")]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_title(f"training (p={p}, seed {seed})", fontsize=10)
    fig.suptitle(f"Modular addition mod {p}: eNTK spectra across grokking (blocks of 2(p−1) = {2 * (p - 1)} modes)",
                 fontsize=11)
    save_figure(fig, path, dpi=FIGURE_DPI)


def plot_modadd_grokking(overlap: pd.DataFrame, curve: pd.DataFrame, path: str | Path,
                         params: CliffParams) -> None:
    """The grokking figure: test accuracy and cliff-2 overlap with the sum family on one epoch
    axis (top), and the drop at the end of cliff 2 with the detector's verdict (bottom)."""
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    tot = overlap[(overlap["layer"] == "total") & (overlap["block"] == "cliff2")]
    seeds = sorted(tot["seed"].unique())
    for i, seed in enumerate(seeds):
        c = curve[curve["seed"] == seed]
        o = tot[tot["seed"] == seed].sort_values("epoch")
        suffix = f" (seed {seed})" if len(seeds) > 1 else ""
        alpha = 1.0 if i == 0 else 0.5
        ax.plot(c["epoch"], c["test_acc"], color="tab:orange", alpha=alpha, label="test accuracy" + suffix)
        ax.plot(c["epoch"], c["train_acc"], color="tab:blue", alpha=alpha * 0.6, linewidth=0.8,
                label="train accuracy" + suffix)
        ax.plot(o["epoch"], o["overlap_sum"], "o-", color="tab:red", markersize=3, alpha=alpha,
                label="cliff 2 ∩ sum family (a+b): ‖QᵀF‖²/rank F" + suffix)
        ax.plot(o["epoch"], o["overlap_diff"], "s--", color="tab:purple", markersize=2.5, alpha=alpha * 0.7,
                label="cliff 2 ∩ difference family (a−b)" + suffix)
        ax2.plot(o["epoch"], o["drop_ratio"], "-", color="black", alpha=alpha, linewidth=0.8)
        det = o[o["detected"].astype(bool)]
        ax2.plot(det["epoch"], det["drop_ratio"], "o", color="tab:green", markersize=4,
                 label="cliff 2 detected" if i == 0 else None)
    p_end = int(tot["end"].iloc[0]) if len(tot) else 0
    ax.set_ylabel("accuracy / subspace overlap")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="center right")
    ax.set_title("Grokking seen in the eNTK: the second cliff aligns with the sum family as test accuracy jumps",
                 fontsize=10)
    ax2.axhline(params.min_ratio, color="grey", linestyle=":", linewidth=1, label=f"min_ratio {params.min_ratio:g}")
    ax2.set_ylabel(f"$\\lambda_{{{p_end}}}/\\lambda_{{{p_end + 1}}}$\n(drop at end of cliff 2)")
    ax2.set_xlabel("epoch")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path, dpi=FIGURE_DPI)


def plot_modadd_heatmaps(heatmaps: dict[int, dict[str, np.ndarray]], p: int, curve: pd.DataFrame,
                         path: str | Path, seed: int = 0) -> None:
    """Fourier-family alignment of cliff 1 and cliff 2 eigenvectors, before and after the
    symmetry rotation, at the chosen epochs (rows)."""
    epochs = list(heatmaps)
    cols = [("cliff1_before", "cliff 1, raw eigenvectors"), ("cliff1_after", "cliff 1, rotated (L_a, L_b)"),
            ("cliff2_before", "cliff 2, raw eigenvectors"), ("cliff2_after", "cliff 2, rotated (L_sum, L_diff)")]
    K = p // 2
    fig, axes = plt.subplots(len(epochs), 4, figsize=(17, 4.3 * len(epochs)), squeeze=False)
    fig.subplots_adjust(hspace=0.5, wspace=0.35)
    acc = curve.set_index("epoch")["test_acc"]
    im = None
    for r, epoch in enumerate(epochs):
        for c, (key, label) in enumerate(cols):
            ax = axes[r, c]
            if key not in heatmaps[epoch]:
                ax.set_axis_off()
                continue
            h = heatmaps[epoch][key]
            im = ax.imshow(h, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            for f in range(1, len(FAMILIES)):
                ax.axhline(f * K - 0.5, color="white", linewidth=0.8)
            ax.set_yticks([f * K + K / 2 - 0.5 for f in range(len(FAMILIES))],
                          [f"{FAMILY_LABELS[f]}\nk=1..{K}" for f in FAMILIES], fontsize=8)
            if key.endswith("after"):
                ax.axvline(h.shape[1] / 2 - 0.5, color="white", linewidth=0.8, linestyle="--")
            start, end = expected_cliffs(p)[key.split("_")[0]]
            ax.set_xlabel(f"eigenvector in block (modes {start}..{end - 1})", fontsize=8)
            ax.set_title(f"epoch {epoch} (test acc {acc.get(epoch, float('nan')):.2f})\n{label}", fontsize=9)
    if im is not None:  # no block fitted in the stored eigenvectors: empty panels, no colour scale
        fig.colorbar(im, ax=axes, shrink=0.6, label="phase-free alignment ‖(ĉ_k·û_j, ŝ_k·û_j)‖")
    fig.suptitle(f"Modular addition mod {p} (seed {seed}): Fourier families cos/sin(2πk·v/p), v ∈ {{a, b, a+b, a−b}}, "
                 f"vs eigenvectors of the total class-averaged eNTK", fontsize=11)
    save_figure(fig, path, dpi=FIGURE_DPI)


def plot_modadd_full_spectrum(full: dict[str, Any], cliffs: Sequence[Any], p: int, path: str | Path,
                              seed: int = 0) -> None:
    """Top eigenvalues of the full flattened eNTK ((p²·p)², matrix-free) at the final checkpoint."""
    ev = full["eigenvalues"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(np.arange(1, ev.size + 1), ev, ".-", markersize=3, linewidth=0.8)
    _mark_cliffs(ax, cliffs, ev)
    ax.axvline(p + 0.5, color="grey", linestyle=":", linewidth=1, label=f"C = p = {p}")
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel(r"$\lambda_i$ (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    n = p ** 3
    ax.set_title(f"Full flattened eNTK ({n}×{n}, class-major) at epoch {int(full['epoch'])}, seed {seed}:\n"
                 f"top {ev.size} eigenvalues by matrix-free Lanczos ({int(full['matvecs'])} products, "
                 f"{float(full['seconds']):.1f}s)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=FIGURE_DPI)
