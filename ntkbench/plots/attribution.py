"""The attribution benchmark figure: LDS (± SEM) and mislabel AUC per method and experiment,
beside the faithfulness τ of the kernel surrogates (``results/attribution.png``). Receives
computed results only (``ntkbench.stages.attribution`` computes them).

Input: a table with one row per (experiment, method[, kernel]) and columns

- ``experiment``, ``method`` (``kglm``, ``kernel-sim``, ``tracin``, ``grad-dot``,
  ``grad-cos``, ``trak``), optional ``kernel`` (kernel kind, empty for gradient methods);
- ``lds``, ``lds_sem`` (NaN where not measured); ``auc`` (mislabel-detection ROC AUC, NaN where
  not measured); optional ``tau``, ``tau_sem`` (kGLM faithfulness, rows of kernel methods).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ntkbench.plots import plt, save_figure

__all__ = ["method_label", "plot_attribution_summary"]

_FAMILY_NAMES = {"kglm": "kGLM", "kernel-sim": "similarity", "tracin": "TracIn-CP", "tracin-seeds": "TracIn (seeds)",
                 "grad-dot": "Grad-Dot", "grad-cos": "Grad-Cos", "trak": "TRAK"}


def method_label(method: str, kernel: str | float | None = None) -> str:
    """Display name, e.g. ``kGLM · trntk``, ``TRAK`` or ``TRAK-10`` (method ``trak-10``)."""
    base, _, k = method.partition("-") if method.startswith("trak-") else (method, "", "")
    name = _FAMILY_NAMES.get(base, base) + (f"-{k}" if k else "")
    return f"{name} · {kernel}" if isinstance(kernel, str) and kernel else name


def plot_attribution_summary(table: pd.DataFrame, path: str | Path, dpi: int = 150) -> None:
    """Three panels, written atomically to ``path``:
    (a) LDS ± SEM per method (rows) and experiment (colours);
    (b) mislabel-detection AUC per method (0.5 = chance);
    (c) LDS against Kendall τ_K for the kGLM attribution of each kernel — does the most
    faithful surrogate also predict retraining best?"""
    df = table.copy()
    if "kernel" not in df:
        df["kernel"] = ""
    df["kernel"] = df["kernel"].fillna("")
    df["label"] = [method_label(m, k) for m, k in zip(df["method"], df["kernel"])]
    labels = list(dict.fromkeys(df["label"]))
    experiments = list(dict.fromkeys(df["experiment"]))
    colours = plt.cm.tab10(np.arange(len(experiments)) % 10)
    height = max(4.0, 0.32 * len(labels) * max(1, len(experiments)) ** 0.5 + 1.5)
    fig, axes = plt.subplots(1, 3, figsize=(16, height), gridspec_kw={"width_ratios": [1.2, 1.0, 1.1]})
    ypos = np.arange(len(labels))
    bar = 0.8 / max(len(experiments), 1)
    for panel, (ax, metric, title) in enumerate([
            (axes[0], "lds", "(a) LDS: Spearman ρ over retrained subsets\n(mean over test points ± SEM)"),
            (axes[1], "auc", "(b) Mislabel detection by self-influence\n(ROC AUC; 0.5 = chance)")]):
        for e, exp in enumerate(experiments):
            sub = df[df["experiment"] == exp].set_index("label").reindex(labels)
            values = sub[metric].to_numpy(dtype=float)
            if not np.isfinite(values).any():
                continue
            err = sub[f"{metric}_sem"].to_numpy(dtype=float) if f"{metric}_sem" in sub else None
            ax.barh(ypos + (e - (len(experiments) - 1) / 2) * bar, values, bar, color=colours[e],
                    xerr=None if err is None else np.nan_to_num(err), capsize=2, label=exp)
        ax.set_yticks(ypos, labels if panel == 0 else [""] * len(labels))
        ax.invert_yaxis()
        ax.axvline(0.5 if metric == "auc" else 0.0, color="black", linewidth=0.8,
                   linestyle="--" if metric == "auc" else "-")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlabel("LDS (higher = attributions predict retraining better)")
    axes[1].set_xlabel("AUC (higher = mislabelled points rank first)")
    axes[1].set_xlim(0.0, 1.0)
    axes[0].legend(fontsize=8, loc="lower right")
    ax = axes[2]
    kg = df[(df["method"] == "kglm") & np.isfinite(df.get("tau", pd.Series(np.nan, index=df.index)).astype(float))]
    for e, exp in enumerate(experiments):
        sub = kg[kg["experiment"] == exp]
        if sub.empty:
            continue
        ax.errorbar(sub["tau"], sub["lds"], xerr=np.nan_to_num(sub.get("tau_sem", 0 * sub["tau"]).astype(float)),
                    yerr=np.nan_to_num(sub["lds_sem"].astype(float)), fmt="o", color=colours[e], label=exp, capsize=2)
        for row in sub.itertuples():
            ax.annotate(row.kernel, (row.tau, row.lds), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if kg.empty:
        ax.text(0.5, 0.5, "no kGLM rows with τ", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("faithfulness τ$_K$ of the kGLM (NN vs kGLM, test set)")
    ax.set_ylabel("LDS of its attribution")
    ax.set_title("(c) Faithful surrogate ⇒ good counterfactual predictions?", fontsize=10)
    ax.grid(alpha=0.3)
    fig.suptitle("Data attribution benchmark: do attributions predict what retraining does?", fontsize=12)
    fig.tight_layout()
    targets = sorted(set(table["target"])) if "target" in table else ["margin"]
    what = " / ".join({"margin": "true-class margin", "neg_loss": "negated loss"}.get(t, t) for t in targets)
    fig.text(0.01, -0.01, f"LDS(x) = Spearman over subsets S_j of ({what} of a network retrained on S_j, "
             "Σ_{i∈S_j} τ(x, i)); bars: mean over test points, error bars: SEM. AUC: training points ranked by "
             "self-influence τ(x_i, x_i), highest first; AUC < 0.5 means mislabelled points score lowest.",
             fontsize=8, ha="left", va="top", wrap=True)
    save_figure(fig, path, dpi=dpi)
