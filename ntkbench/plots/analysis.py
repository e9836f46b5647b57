"""Figures of the surrogate analysis (paper 001, Figures 1-2, appendices L and M): kGLM
attributions per training class, the most similar training points per kernel, and the
linear-realisation parity plot. Every function draws results it is given."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ntkbench.plots import plt, save_figure
from ntkbench.tables import KERNEL_DISPLAY_NAMES

__all__ = ["as_display_image", "plot_attributions", "plot_exemplars", "plot_realisation", "PHI_COLOURS"]

PHI_COLOURS = {"linear": "#1f77b4", "logistic": "#d62728", "arctan": "#2ca02c"}
TEST_COLOUR = "#1f77b4"  # frame of the test input in the exemplar figure
BOX_NOTE = "box: IQR (25-75%)\nline: median\n▲: mean\nwhiskers: 5-95%"


def _kernel_name(kernel: str) -> str:
    return KERNEL_DISPLAY_NAMES.get(kernel, kernel)


def _wrap(title: str, width_in: float, fontsize: float = 10) -> str:
    """``title`` with each of its lines wrapped to a figure ``width_in`` inches wide (a figure
    of one kernel is narrow; its title must not be cut off or dwarf it)."""
    chars = max(40, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))


def as_display_image(x: np.ndarray) -> tuple[np.ndarray, str | None] | None:
    """An input as imshow draws it: (H, W) grey or (H, W, 3) RGB scaled into [0, 1], or None
    when it is no image (e.g. a token sequence).

    ``(1|3, H, W)`` and ``(H, W)`` are images; a 1-D input (a token sequence, or features) is
    not drawn, even when its length is a square. Pixels already in [0, 1] are kept; others
    (standardised inputs) are min-max scaled per image, so the picture is recognisable but not
    photometric.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3) and min(a.shape[1:]) >= 2:
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    elif not (a.ndim == 2 and min(a.shape) >= 2):
        return None
    if a.min() < 0.0 or a.max() > 1.0:
        span = a.max() - a.min()
        a = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    return a, ("gray" if a.ndim == 2 else None)


def _draw_image(ax: plt.Axes, x: np.ndarray, title: str, fontsize: float = 7) -> None:
    image = as_display_image(x)
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=fontsize, transform=ax.transAxes)
        return
    pixels, cmap = image
    ax.imshow(pixels, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize, pad=2)


def plot_attributions(path: str | Path, kernels: Sequence[str], test_rows: Sequence[int],
                      test_inputs: np.ndarray, test_labels: Sequence[int], nn_predictions: Sequence[int],
                      class_means: Mapping[tuple[int, str], np.ndarray],
                      box_values: Mapping[tuple[int, str], Sequence[np.ndarray]],
                      box_logit: Mapping[tuple[int, str], tuple[int, float, str]],
                      class_names: Sequence[str], logit_names: Sequence[str], title: str) -> None:
    """Per test point two rows: (a) heat maps of the mean attribution per training class
    (columns) and logit (rows), one per kernel; (b) box plots of the attributions of the
    kGLM's predicted-class logit split by training class (box IQR, median, mean marker,
    whiskers 5-95%).

    ``class_means[(p, kernel)]`` (C_out, num_classes) for test point ``p`` (position in
    ``test_rows``); ``box_values[(p, kernel)]`` one array per training class;
    ``box_logit[(p, kernel)] = (logit column, kGLM logit value, the kGLM's predicted class)``;
    ``logit_names[c]`` names
    logit column ``c`` (a binary network's one logit is class 1's).
    """
    n_points, n_kernels = len(test_rows), len(kernels)
    n_classes, n_logits = len(class_names), len(logit_names)
    cell_w = max(2.4, 0.26 * n_classes + 1.0)  # heat-map cells of about a quarter inch
    cell_h = max(2.0, 0.26 * n_logits + 0.9)
    width = 1.2 * cell_w + cell_w * n_kernels
    title = _wrap(title, width)
    # inches above the panels: the title lines plus the first row's two-line panel titles
    head = 0.75 + 0.22 * (title.count("\n") + 1)
    height = (cell_h + 2.4) * n_points * 1.05 + head + 0.3
    fig, axes = plt.subplots(2 * n_points, n_kernels + 1, squeeze=False, figsize=(width, height),
                             gridspec_kw={"width_ratios": [1.2] + [1.0] * n_kernels,
                                          "height_ratios": [cell_h, 2.4] * n_points, "hspace": 0.75, "wspace": 0.35,
                                          "top": 1.0 - head / height, "bottom": 0.3 / height,
                                          "left": 0.1 / width, "right": 1.0 - 0.1 / width})
    annotate = n_classes * n_logits <= 24
    for p, row in enumerate(test_rows):
        image_ax, note_ax = axes[2 * p, 0], axes[2 * p + 1, 0]
        _draw_image(image_ax, test_inputs[p], f"test #{int(row)}\ntrue {class_names[test_labels[p]]}, "
                    f"NN predicts {class_names[nn_predictions[p]]}", fontsize=8)
        image_ax.set_anchor("W")  # room on its right for the first heat map's logit names
        note_ax.axis("off")
        note_ax.text(0.0, 0.5, BOX_NOTE, fontsize=7, va="center", transform=note_ax.transAxes)
        for k, kernel in enumerate(kernels):
            ax = axes[2 * p, k + 1]
            means = np.asarray(class_means[(p, kernel)], dtype=np.float64)
            vmax = float(np.nanmax(np.abs(means))) or 1.0
            im = ax.imshow(means, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
            ax.set_xticks(range(n_classes), class_names, fontsize=7)
            # logit names on the first heat map of a row only: they would run into the colour
            # bar of the panel to the left
            ax.set_yticks(range(n_logits), logit_names if k == 0 else [""] * n_logits, fontsize=7)
            ax.set_xlabel("training class", fontsize=7)
            if k == 0:
                ax.set_ylabel("kGLM logit", fontsize=7)
            ax.set_title(f"{_kernel_name(kernel)}: mean attribution", fontsize=8)
            if annotate:
                for (c, j), value in np.ndenumerate(means):
                    ax.text(j, c, f"{value:.2g}", ha="center", va="center", fontsize=6,
                            color="white" if abs(value) > 0.6 * vmax else "black")
            bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
            bar.ax.tick_params(labelsize=6)
            box_ax = axes[2 * p + 1, k + 1]
            values = [np.asarray(v, dtype=np.float64) for v in box_values[(p, kernel)]]
            positions = [j for j, v in enumerate(values) if v.size]
            box_ax.boxplot([values[j] for j in positions], positions=positions, whis=(5, 95), showfliers=False,
                           showmeans=True, widths=0.6,
                           meanprops={"marker": "^", "markerfacecolor": "black", "markeredgecolor": "black",
                                      "markersize": 4},
                           medianprops={"color": "#d62728"})
            box_ax.axhline(0.0, color="grey", lw=0.6, ls=":")
            box_ax.set_xticks(range(n_classes), class_names, fontsize=7)
            box_ax.set_xlim(-0.6, n_classes - 0.4)
            box_ax.tick_params(axis="y", labelsize=6)
            box_ax.set_xlabel("training class", fontsize=7)
            if k == 0:
                box_ax.set_ylabel("attribution (logit units)", fontsize=7)
            column, value, predicted = box_logit[(p, kernel)]
            box_ax.set_title(f"logit {logit_names[column]} = {value:.3g}\n(kGLM predicts {predicted})", fontsize=8)
    fig.suptitle(title, fontsize=10, y=1.0 - 0.15 / height, va="top")
    save_figure(fig, path)


def plot_exemplars(path: str | Path, kernels: Sequence[str], test_rows: Sequence[int], test_inputs: np.ndarray,
                   test_labels: Sequence[int], train_inputs: np.ndarray, train_labels: np.ndarray,
                   indices: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray],
                   class_names: Sequence[str], title: str) -> None:
    """One row per kernel; per test point a block of the test input and its top-k training
    points (``indices[kernel]`` / ``values[kernel]`` of shape (P, k)), titled with the
    training index, label and kernel value. Inputs that are no images (token sequences) are
    written as text cells instead (the same information as the table)."""
    n_points = len(test_rows)
    k = int(np.asarray(indices[kernels[0]]).shape[1])
    block = k + 1
    widths = ([1.0] * block + [0.3]) * (n_points - 1) + [1.0] * block
    fig, axes = plt.subplots(len(kernels), len(widths), squeeze=False,
                             figsize=(1.05 * sum(widths) + 1.0, 1.35 * len(kernels) + 1.0),
                             gridspec_kw={"width_ratios": widths, "wspace": 0.1, "hspace": 0.6})
    for r, kernel in enumerate(kernels):
        for p, row in enumerate(test_rows):
            c0 = p * (block + 1)
            if p > 0:
                axes[r, c0 - 1].axis("off")
            _draw_image(axes[r, c0], test_inputs[p], f"TEST #{int(row)}\ny={class_names[test_labels[p]]}")
            for spine in axes[r, c0].spines.values():
                spine.set_edgecolor(TEST_COLOUR)
                spine.set_linewidth(2.5)
            if p == 0:
                axes[r, c0].set_ylabel(_kernel_name(kernel), fontsize=9, rotation=0, ha="right", va="center",
                                       labelpad=8)
            for j in range(k):
                idx = int(indices[kernel][p, j])
                _draw_image(axes[r, c0 + 1 + j], train_inputs[idx],
                            f"#{idx} y={class_names[int(train_labels[idx])]}\nκ={values[kernel][p, j]:.4g}", fontsize=6)
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=10)
    save_figure(fig, path)


def plot_realisation(path: str | Path, kernels: Sequence[str], pairs: Mapping[str, pd.DataFrame],
                     r2: Mapping[str, Mapping[str, float]], title: str, max_points: int = 3000,
                     eps: float = 1e-7) -> None:
    """Two panels per kernel on the held-out pairs (``pairs[kernel]`` as
    :func:`ntkbench.analysis.realisation_pairs` returns it), one colour per fitted Φ: the
    network's probability against Φ(kGLM logit) (left), and the same in logit space (right),
    where R² is computed (Φ clipped into [eps, 1 - eps] first, as the metric does), with R² in
    the legend and the diagonal y = x. At most ``max_points`` pairs are drawn (an evenly spaced
    subset); every pair counts in R²."""
    n = len(kernels)
    per_row = min(2, n)
    n_rows = math.ceil(n / per_row)
    fig, axes = plt.subplots(n_rows, 2 * per_row, squeeze=False, figsize=(3.4 * 2 * per_row, 3.3 * n_rows + 0.9))
    for ax in axes.ravel()[2 * n:]:
        ax.axis("off")
    flat = axes.ravel()
    for i, kernel in enumerate(kernels):
        prob_ax, logit_ax = flat[2 * i], flat[2 * i + 1]
        frame = pairs[kernel]
        shown = frame
        if len(frame) > max_points:
            shown = frame.iloc[np.linspace(0, len(frame) - 1, max_points).astype(int)]
        logit_values = [shown.nn_logit.to_numpy()]
        for name, colour in PHI_COLOURS.items():
            score = r2[kernel].get(name, math.nan)
            label = f"Φ {name}: R² = {score:.3f}" if math.isfinite(score) else f"Φ {name}: no fit"
            phi = shown[f"phi_{name}"].to_numpy(dtype=np.float64)
            if np.isfinite(phi).any():
                clipped = np.clip(phi, eps, 1.0 - eps)
                prob_ax.scatter(np.clip(phi, 0.0, 1.0), shown.nn_prob, s=6, alpha=0.45, color=colour, lw=0)
                phi_logit = np.log(clipped) - np.log1p(-clipped)
                logit_ax.scatter(phi_logit, shown.nn_logit, s=6, alpha=0.45, color=colour, lw=0, label=label)
                logit_values.append(phi_logit[np.isfinite(phi_logit)])
            else:
                logit_ax.plot([], [], color=colour, label=label)
        prob_ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
        prob_ax.set_xlim(-0.05, 1.05)
        prob_ax.set_ylim(-0.05, 1.05)
        prob_ax.set_xlabel("Φ(kGLM logit), clipped to [0, 1]", fontsize=8)
        prob_ax.set_ylabel("NN probability", fontsize=8)
        prob_ax.set_title(f"{_kernel_name(kernel)}: probability ({len(frame)} pairs)", fontsize=9)
        values = np.concatenate(logit_values)
        low, high = (float(values.min()), float(values.max())) if values.size else (-1.0, 1.0)
        pad = 0.05 * max(high - low, 1e-3)
        logit_ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", lw=0.8, ls="--", label="y = x")
        logit_ax.set_xlim(low - pad, high + pad)
        logit_ax.set_ylim(low - pad, high + pad)
        logit_ax.set_xlabel("logit Φ(kGLM logit)", fontsize=8)
        logit_ax.set_ylabel("logit of NN probability", fontsize=8)
        logit_ax.set_title(f"{_kernel_name(kernel)}: logit space (R²)", fontsize=9)
        logit_ax.legend(fontsize=7, loc="upper left", markerscale=2, framealpha=0.85)
        for ax in (prob_ax, logit_ax):
            ax.tick_params(labelsize=7)
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
