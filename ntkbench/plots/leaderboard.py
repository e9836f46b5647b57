"""The zoo leaderboard's figures (issue 23): a kernel × architecture heatmap of faithfulness τ
beside attribution LDS, and faithfulness against kernel cost with its Pareto front. Receives
the long table of :func:`ntkbench.leaderboard.long_table` (architecture, kernel, metric, mean,
sem)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ntkbench.plots import log_minor_labels, plt, save_figure

__all__ = ["plot_heatmaps", "plot_pareto", "pareto_front"]


def _grid(long: pd.DataFrame, metric: str, kernels: Sequence[str], architectures: Sequence[str]
          ) -> tuple[np.ndarray, np.ndarray]:
    sub = long[long["metric"] == metric]
    mean = sub.pivot_table(index="kernel", columns="architecture", values="mean", aggfunc="first")
    sem = sub.pivot_table(index="kernel", columns="architecture", values="sem", aggfunc="first")
    shape = (list(kernels), list(architectures))
    return (mean.reindex(index=shape[0], columns=shape[1]).to_numpy(dtype=float),
            sem.reindex(index=shape[0], columns=shape[1]).to_numpy(dtype=float))


def plot_heatmaps(long: pd.DataFrame, kernels: Sequence[str], architectures: Sequence[str], path: str | Path,
                  dpi: int = 150) -> None:
    """Two panels, kernels (rows) × architectures (columns): (a) reference τ, (b) kGLM LDS;
    each cell annotated with mean ± SEM, grey where not measured."""
    panels = [("tau", "(a) Faithfulness: Kendall τ (NN vs kGLM, test set)", "viridis"),
              ("lds", "(b) Attribution: LDS of the kGLM (vs subset retraining)", "magma")]
    fig, axes = plt.subplots(1, 2, figsize=(1.3 * len(architectures) * 2 + 3, 0.55 * len(kernels) + 2.2))
    for ax, (metric, title, cmap) in zip(axes, panels):
        mean, sem = _grid(long, metric, kernels, architectures)
        masked = np.ma.masked_invalid(mean)
        colours = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
        finite = mean[np.isfinite(mean)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        im = ax.imshow(masked, cmap=colours, vmin=lo, vmax=hi if hi > lo else lo + 1e-9, aspect="auto")
        for i in range(mean.shape[0]):
            for j in range(mean.shape[1]):
                if np.isfinite(mean[i, j]):
                    text = f"{mean[i, j]:.2f}" + (f"\n±{sem[i, j]:.2f}" if np.isfinite(sem[i, j]) else "")
                    shade = (mean[i, j] - lo) / (hi - lo) if hi > lo else 0.5
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if shade < 0.55 else "black")
                else:
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="#666666")
        ax.set_xticks(range(len(architectures)), architectures, rotation=30, ha="right")
        ax.set_yticks(range(len(kernels)), kernels)
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.suptitle("Which kernel is most faithful, and which attributes best? (τ: mean ± SEM over seeds; "
                 "LDS: mean ± SEM over test points)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats on both (lower cost, higher quality)."""
    cost, quality = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
    front = np.zeros(len(cost), dtype=bool)
    for i in range(len(cost)):
        dominated = (cost <= cost[i]) & (quality >= quality[i]) & ((cost < cost[i]) | (quality > quality[i]))
        front[i] = np.isfinite(cost[i]) and np.isfinite(quality[i]) and not dominated.any()
    return front


def plot_pareto(long: pd.DataFrame, kernels: Sequence[str], architectures: Sequence[str], path: str | Path,
                cost_metric: str = "kernel_cpu_s", dpi: int = 150) -> None:
    """Faithfulness τ against the kernel job's cost (log scale), one point per (kernel,
    architecture): colour = kernel, marker = architecture; each architecture's Pareto front
    (cheapest kernel for its faithfulness) is drawn as a line."""
    wide = long.pivot_table(index=["architecture", "kernel"], columns="metric", values="mean", aggfunc="first")
    errs = long.pivot_table(index=["architecture", "kernel"], columns="metric", values="sem", aggfunc="first")
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    colours = dict(zip(kernels, plt.cm.tab10(np.arange(len(kernels)) % 10)))
    markers = dict(zip(architectures, "osD^vP*Xph"))
    for arch in architectures:
        if arch not in wide.index.get_level_values(0) or cost_metric not in wide or "tau" not in wide:
            continue
        sub = wide.loc[arch].reindex(kernels)
        err = errs.loc[arch].reindex(kernels)
        cost, tau = sub[cost_metric].to_numpy(dtype=float), sub["tau"].to_numpy(dtype=float)
        for k, c, t, e in zip(kernels, cost, tau, err["tau"].to_numpy(dtype=float)):
            if np.isfinite(c) and np.isfinite(t):
                ax.errorbar(c, t, yerr=0 if not np.isfinite(e) else e, fmt=markers[arch], color=colours[k],
                            markersize=7, capsize=2)
        front = pareto_front(cost, tau)
        order = np.argsort(cost[front])
        ax.plot(cost[front][order], tau[front][order], color="grey", linewidth=0.8, linestyle="--", zorder=0)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(log_minor_labels())
    ax.set_xlabel(f"kernel job {'CPU' if cost_metric == 'kernel_cpu_s' else 'wall'} time, s (log scale; mean over seeds)")
    ax.set_ylabel("faithfulness τ (NN vs kGLM, test set)")
    ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], color=colours[k], marker="o", linestyle="", label=k) for k in kernels]
    handles += [plt.Line2D([], [], color="black", marker=markers[a], linestyle="", label=a) for a in architectures]
    handles.append(plt.Line2D([], [], color="grey", linestyle="--", label="Pareto front per architecture"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Faithfulness against cost: up and left is better", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
