"""Figures only: every function here receives computed results and draws them; nothing here
recomputes an analysis. One module per stage family (``summary``, ``forensics``,
``spectral``); :func:`save_figure` writes PNGs atomically.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workflow jobs and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from ntkbench.utils import atomic_path  # noqa: E402

__all__ = ["plt", "save_figure", "log_minor_labels"]


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 150) -> None:
    """Save ``fig`` to ``path`` atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def log_minor_labels() -> FuncFormatter:
    """Minor-tick labels of a log axis for the 2s and 5s between decades only: labelling every
    minor tick ran them together ("60708090100") on axes spanning a decade or less."""

    def label(v: float, _pos) -> str:
        if v <= 0:
            return ""
        mantissa = v / 10 ** math.floor(math.log10(v))
        return f"{v:g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""

    return FuncFormatter(label)
