"""Figures only: every function here receives computed results and draws them; nothing here
recomputes an analysis. One module per stage family (``summary``, ``forensics``,
``spectral``); :func:`save_figure` writes PNGs atomically.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workflow jobs and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

from ntkbench.utils import atomic_path  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 150) -> None:
    """Save ``fig`` to ``path`` atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
