"""Figure of the main DAG: faithfulness (τ, TAD) of every kernel surrogate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ntkbench.plots import plt, save_figure
from ntkbench.tables import KERNEL_DISPLAY_NAMES

__all__ = ["plot_faithfulness_summary"]


def plot_faithfulness_summary(summary: pd.DataFrame, path: str | Path) -> None:
    """Kendall τ_K (reference definition) and TAD per kernel, grouped by experiment, with SEM
    error bars; the default kGLM of each experiment (further ``kglm.variants`` are in the tables)."""
    if "variant" in summary:
        summary = summary[summary["variant"] == "default"]
    experiments = list(dict.fromkeys(summary["experiment"]))
    kernels = list(dict.fromkeys(summary["kernel"]))
    width = 0.8 / max(len(kernels), 1)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(experiments) + 4), 4.2))
    colours = plt.cm.tab10(np.arange(len(kernels)) % 10)
    for ax, metric, label in [(axes[0], "tau", "Kendall τ$_K$ (NN vs kGLM, test set)"),
                              (axes[1], "tad", "TAD = kGLM acc − NN acc (%)")]:
        for j, kernel in enumerate(kernels):
            sub = summary[summary["kernel"] == kernel].set_index("experiment").reindex(experiments)
            pos = np.arange(len(experiments)) + (j - (len(kernels) - 1) / 2) * width
            ax.bar(pos, sub[metric], width, yerr=sub[f"{metric}_sem"].fillna(0), capsize=2,
                   color=colours[j], label=KERNEL_DISPLAY_NAMES.get(kernel, kernel))
        ax.set_xticks(np.arange(len(experiments)), experiments, rotation=15)
        ax.set_ylabel(label)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("Faithfulness of kernel surrogates")
    axes[1].set_title("Test accuracy differential")
    n_seeds = int(summary["n_seeds"].max()) if "n_seeds" in summary else 1
    fig.suptitle(f"Mean ± SEM over {n_seeds} seeds", fontsize=9, y=0.98)
    axes[1].legend(fontsize=8, loc="best", ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
