"""Figures of the modular-addition transformer experiment (issue 15): spectra per layer group
through training, the grokking figure (accuracy, sum-family overlap, detected cliff positions)
and the Fourier alignment of the detected blocks before/after the symmetry rotation. They
draw what the stage computed; nothing is recomputed here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

from ntkbench.plots import plt, save_figure
from ntkbench.plots.spectral import FAMILY_LABELS, FIGURE_DPI
from ntkbench.spectral.features import FAMILIES

__all__ = ["plot_tf_spectra", "plot_tf_grokking", "plot_tf_alignment"]

_GROUP_TITLES = {"total": "total (all parameters)", "embed": "embedding (token + position)",
                 "attn": "attention (Q, K, V, O)", "mlp": "MLP (in, out)", "unembed": "unembedding"}


def _grok_line(ax: plt.Axes, grok: int | None) -> None:
    if grok is not None:
        ax.axvline(grok, color="black", linestyle="--", linewidth=0.9)


def plot_tf_spectra(spectra: dict[str, Any], curve: pd.DataFrame, cliffs: pd.DataFrame, path: str | Path,
                    grok: int | None = None) -> None:
    """Training curve, then λ_i/λ_1 of the class-averaged eNTK per layer group (colour = epoch),
    with the cliffs detected at the first and the last checkpoint."""
    p, epochs, layers = int(spectra["p"]), spectra["epochs"], list(spectra["layers"])
    n = len(layers) + 1
    cols = 3
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 4.4 * rows), squeeze=False)
    fig.subplots_adjust(wspace=0.32, hspace=0.38)
    axes = axes.ravel()
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.Normalize(vmin=float(epochs.min()), vmax=float(epochs.max()))
    ax = axes[0]
    ax.plot(curve["epoch"], curve["train_acc"], color="tab:blue", label="train accuracy")
    ax.plot(curve["epoch"], curve["test_acc"], color="tab:orange", label="test accuracy")
    _grok_line(ax, grok)
    ax.set(xlabel="epoch", ylabel="accuracy", ylim=(-0.02, 1.02),
           title=f"training (p={p})\ndashed: first test acc ≥ 0.5 (epoch {grok})")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    for l, layer in enumerate(layers):
        ax = axes[l + 1]
        for t, epoch in enumerate(epochs):
            ev = spectra["eigenvalues"][t, l]
            ax.semilogy(np.arange(1, ev.size + 1), np.maximum(ev / ev[0], 1e-12), color=cmap(norm(epoch)),
                        linewidth=0.8, alpha=0.8)
        for t, colour in ((0, "tab:purple"), (len(epochs) - 1, "crimson")):
            ev = spectra["eigenvalues"][t, l]
            ends = cliffs[(cliffs["layer"] == layer) & (cliffs["epoch"] == int(epochs[t]))]["end"]
            ax.plot(ends + 0.5, [ev[e - 1] / ev[0] for e in ends], "v", color=colour, markersize=7,
                    label=f"cliffs, epoch {int(epochs[t])}: {', '.join(str(e) for e in ends) or 'none'}")
        ax.set(xlabel="eigenvalue index i", ylabel=r"$\lambda_i / \lambda_1$ (log)",
               title=f"class-averaged eNTK:\n{_GROUP_TITLES.get(layer, layer)}", ylim=(1e-8, 2))
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[1:n]), label="epoch", shrink=0.8)
    fig.suptitle(f"1-layer transformer, modular addition mod {p}: eNTK spectra through training "
                 "(triangles: cliffs found by the detector, position = modes above the drop)", fontsize=11)
    save_figure(fig, path, dpi=FIGURE_DPI)


def plot_tf_grokking(overlap: pd.DataFrame, cliffs: pd.DataFrame, curve: pd.DataFrame, path: str | Path,
                     grok: int | None = None) -> None:
    """Top: accuracy and the sum family's overlap with the top-m eigenvectors of the total
    kernel; bottom: where the detector finds cliffs in the total kernel at each checkpoint."""
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax.plot(curve["epoch"], curve["test_acc"], color="tab:orange", linewidth=2, label="test accuracy")
    ax.plot(curve["epoch"], curve["train_acc"], color="tab:blue", linewidth=1, label="train accuracy")
    tot = overlap[overlap["layer"] == "total"]
    shades = plt.get_cmap("Reds")(np.linspace(0.45, 0.95, max(tot["modes"].nunique(), 1)))
    for colour, (m, rows) in zip(shades, tot.groupby("modes")):
        rows = rows.sort_values("epoch")
        ax.plot(rows["epoch"], rows["overlap_sum"], "o-", color=colour, markersize=3,
                label=f"a+b family in top {m} modes")
        ax.plot(rows["epoch"], rows["overlap_a"], ":", color=colour, linewidth=1,
                label=f"a family in top {m} modes")
    _grok_line(ax, grok)
    ax.set(ylabel="accuracy / overlap ‖QᵀF‖²/rank F", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Transformer grokking seen in the eNTK (total class-averaged kernel); dashed: test acc ≥ 0.5",
                 fontsize=10)
    tc = cliffs[cliffs["layer"] == "total"]
    if len(tc):
        sc = ax2.scatter(tc["epoch"], tc["end"], c=np.log10(tc["ratio"]), s=14 + 60 * np.log10(tc["ratio"]).clip(0, 1),
                         cmap="magma_r", vmin=0, vmax=max(float(np.log10(tc["ratio"]).max()), 0.1))
        fig.colorbar(sc, ax=ax2, label="log10 drop ratio", pad=0.01)
    else:
        ax2.text(0.5, 0.5, "no cliffs detected at any checkpoint", ha="center", va="center", transform=ax2.transAxes)
    _grok_line(ax2, grok)
    ax2.set(xlabel="epoch", ylabel="cliff position\n(modes above the drop)", yscale="symlog")
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path, dpi=FIGURE_DPI)


def plot_tf_alignment(heatmaps: dict[int, list], p: int, curve: pd.DataFrame, path: str | Path,
                      max_blocks: int = 2) -> None:
    """Rows: chosen epochs; columns: the first detected blocks of the total kernel, raw and
    after the symmetry rotation; each panel: phase-free alignment of the block's vectors
    (columns) with cos/sin(2πk·v/p), v ∈ {a, b, a+b, a−b}, k = 1..⌊p/2⌋ (rows)."""
    epochs = list(heatmaps)
    K = p // 2
    ncol = 2 * max(1, min(max_blocks, max((len(v) for v in heatmaps.values()), default=1)))
    fig, axes = plt.subplots(len(epochs), ncol, figsize=(4.6 * ncol, 4.0 * max(len(epochs), 1)), squeeze=False)
    fig.subplots_adjust(hspace=0.6, wspace=0.4)
    acc = curve.set_index("epoch")["test_acc"]
    im = None
    for r, epoch in enumerate(epochs):
        for c in range(ncol):
            ax = axes[r, c]
            b, which = divmod(c, 2)
            if b >= len(heatmaps[epoch]):
                ax.set_axis_off()
                continue
            row, maps = heatmaps[epoch][b]
            h = maps["after" if which else "before"]
            im = ax.imshow(h, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            for f in range(1, len(FAMILIES)):
                ax.axhline(f * K - 0.5, color="white", linewidth=0.8)
            ax.set_yticks([f * K + K / 2 - 0.5 for f in range(len(FAMILIES))],
                          [f"{FAMILY_LABELS[fam]}\nk=1..{K}" for fam in FAMILIES], fontsize=8)
            rot = {"ab": "L_a, L_b", "sum_diff": "L_sum, L_diff"}[row["rotation"]]
            what = f"rotated ({rot})" if which else "raw eigenvectors"
            src = f"detected block {b}" if row["source"] == "detected" else "top window (no block detected)"
            ax.set_xlabel(f"vector in modes {row['start']}..{row['end'] - 1}", fontsize=8)
            ax.set_title(f"epoch {epoch} (test acc {acc.get(epoch, float('nan')):.2f})\n{src}\n{what}: "
                         f"mean best {row['best_after' if which else 'best_before']:.2f}", fontsize=8.5)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="phase-free alignment ‖(ĉ_k·û_j, ŝ_k·û_j)‖")
    fig.suptitle(f"Transformer, modular addition mod {p}: Fourier-family alignment of the detected eNTK blocks "
                 "(total kernel)", fontsize=11)
    save_figure(fig, path, dpi=FIGURE_DPI)
