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
from typing import Mapping

import numpy as np
import pandas as pd

from ntkbench.plots import plt, save_figure

__all__ = ["method_label", "method_order", "published_value", "published_column", "plot_attribution_summary"]

_FAMILY_NAMES = {"kglm": "kGLM", "kernel-sim": "similarity", "tracin": "TracIn-CP", "tracin-seeds": "TracIn (seeds)",
                 "grad-dot": "Grad-Dot", "grad-cos": "Grad-Cos", "trak": "TRAK"}


def method_label(method: str, kernel: str | float | None = None) -> str:
    """Display name, e.g. ``kGLM · trntk``, ``TRAK``, ``TRAK-10`` (method ``trak-10``) or
    ``IF λ=0.01`` (method ``if@0.01``, the influence function with that damping)."""
    if method.startswith("if@"):
        return f"IF λ={method[3:]}"
    base, _, k = method.partition("-") if method.startswith("trak-") else (method, "", "")
    name = _FAMILY_NAMES.get(base, base) + (f"-{k}" if k else "")
    return f"{name} · {kernel}" if isinstance(kernel, str) and kernel else name


def published_value(published: Mapping[str, Mapping[str, float]] | None, experiment: str, method: str) -> float:
    """The published LDS of ``method`` on ``experiment`` (NaN if none); the key ``if`` stands for
    the influence-function rows ``if@<damping>`` (see :func:`published_column`)."""
    ref = (published or {}).get(experiment, {})
    key = "if" if method.startswith("if@") and method not in ref else method
    return float(ref.get(key, np.nan))


def published_column(table: pd.DataFrame, published: Mapping[str, Mapping[str, float]] | None) -> np.ndarray:
    """The published LDS beside each row of ``table`` (columns experiment, method, lds), NaN
    where there is none. A published IF value (key ``if``) stands beside the experiment's best
    ``if@<damping>`` row only: its authors report the best damping of their grid."""
    values = np.array([published_value(published, e, str(m)) for e, m in zip(table["experiment"], table["method"])])
    is_if = table["method"].astype(str).str.startswith("if@").to_numpy()
    for exp in set(table["experiment"][is_if]):
        rows = np.flatnonzero(is_if & (table["experiment"] == exp).to_numpy())
        if "if" in (published or {}).get(exp, {}):  # not when the damping itself is published
            best = rows[np.nanargmax(table["lds"].to_numpy(dtype=float)[rows])]
            values[rows[rows != best]] = np.nan
    return values


def method_order(method: str) -> int:
    """Row order of the table and figure: kernel methods, gradient methods, influence functions."""
    return 0 if method in ("kglm", "kernel-sim") else 2 if method.startswith("if@") else 1


def plot_attribution_summary(table: pd.DataFrame, path: str | Path, dpi: int = 150,
                             published: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Three panels, written atomically to ``path``:
    (a) LDS ± SEM per method (rows) and experiment (colours), with the ``published`` value of
    a method on an experiment (``{experiment: {method: LDS}}``) marked as a black diamond;
    (b) mislabel-detection AUC per method (0.5 = chance), left out when no row has one;
    (c) LDS against Kendall τ_K for the kGLM attribution of each kernel — does the most
    faithful surrogate also predict retraining best?"""
    df = table.copy()
    if "kernel" not in df:
        df["kernel"] = ""
    df["kernel"] = df["kernel"].fillna("")
    df["label"] = [method_label(m, k) for m, k in zip(df["method"], df["kernel"])]
    df["published"] = published_column(df, published)
    df = df.iloc[np.argsort([method_order(str(m)) for m in df["method"]], kind="stable")]
    labels = list(dict.fromkeys(df["label"]))
    experiments = list(dict.fromkeys(df["experiment"]))
    colours = plt.cm.tab10(np.arange(len(experiments)) % 10)
    height = max(4.0, 0.32 * len(labels) * max(1, len(experiments)) ** 0.5 + 1.5)
    with_auc = bool(np.isfinite(df["auc"].to_numpy(dtype=float)).any())
    panels = [("lds", "(a) LDS: Spearman ρ over retrained subsets\n(mean over test points ± SEM)")]
    if with_auc:
        panels.append(("auc", "(b) Mislabel detection by self-influence\n(ROC AUC; 0.5 = chance)"))
    ratios = [1.2, 1.0, 1.1] if with_auc else [1.3, 1.1]
    fig, axes = plt.subplots(1, len(ratios), figsize=(5.4 * len(ratios), height), gridspec_kw={"width_ratios": ratios})
    ypos = np.arange(len(labels))
    bar = 0.8 / max(len(experiments), 1)
    marked = False
    for panel, (metric, title) in enumerate(panels):
        ax = axes[panel]
        for e, exp in enumerate(experiments):
            sub = df[df["experiment"] == exp].set_index("label").reindex(labels)
            values = sub[metric].to_numpy(dtype=float)
            if not np.isfinite(values).any():
                continue
            offset = ypos + (e - (len(experiments) - 1) / 2) * bar
            err = sub[f"{metric}_sem"].to_numpy(dtype=float) if f"{metric}_sem" in sub else None
            ax.barh(offset, values, bar, color=colours[e], xerr=None if err is None else np.nan_to_num(err),
                    capsize=2, label=exp)
            if metric == "lds":
                ref = sub["published"].to_numpy(dtype=float)
                if np.isfinite(ref).any():
                    ax.scatter(ref, offset, marker="D", s=22, color="black", zorder=3,
                               label=None if marked else "published (Deng et al. 2024)")
                    marked = True
        ax.set_yticks(ypos, labels if panel == 0 else [""] * len(labels))
        ax.invert_yaxis()
        ax.axvline(0.5 if metric == "auc" else 0.0, color="black", linewidth=0.8,
                   linestyle="--" if metric == "auc" else "-")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlabel("LDS (higher = attributions predict retraining better)")
    if with_auc:
        axes[1].set_xlabel("AUC (higher = mislabelled points rank first)")
        axes[1].set_xlim(0.0, 1.0)
    axes[0].legend(fontsize=8, loc="center right")  # the short kernel-method bars leave that corner free
    ax = axes[-1]
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
    ax.set_title(f"({'c' if with_auc else 'b'}) Faithful surrogate ⇒ good counterfactual predictions?", fontsize=10)
    ax.grid(alpha=0.3)
    fig.suptitle("Data attribution benchmark: do attributions predict what retraining does?", fontsize=12)
    fig.tight_layout()
    targets = sorted(set(table["target"])) if "target" in table else ["margin"]
    what = " / ".join({"margin": "true-class margin", "neg_loss": "negated loss"}.get(t, t) for t in targets)
    fig.text(0.01, -0.01, f"LDS(x) = Spearman over subsets S_j of ({what} of a network retrained on S_j, "
             "Σ_{i∈S_j} τ(x, i)); bars: mean over test points, error bars: SEM."
             + (" AUC: training points ranked by self-influence τ(x_i, x_i), highest first; AUC < 0.5 means "
                "mislabelled points score lowest." if with_auc else "")
             + (" Diamonds: the published LDS of the same method and model (its authors' ground truth and networks)."
                if marked else ""),
             fontsize=8, ha="left", va="top", wrap=True)
    save_figure(fig, path, dpi=dpi)
