"""Automatic detection of spectral cliffs: eigenvalue drops that stand out from their neighbourhood.

A cliff after the first i eigenvalues (a *position* i, the count of modes above the drop) is a
gap g_i = log(λ_i / λ_{i+1}) (1-based λ) that is both

* large in absolute terms: λ_i / λ_{i+1} ≥ ``min_ratio``, and
* large relative to the local spacing of the spectrum: g_i ≥ ``min_contrast`` · b_i, where
  b_i is the mean of the gaps within ``window`` positions on either side, after dropping the
  ``trim`` largest of them (so a big neighbouring cliff does not mask a smaller one);

and no larger cliff lies closer than ``min_separation`` positions (a drop right beside a bigger
one is that cliff's shoulder, not a block of its own).

The relative test is what lets a subtle drop (λ_i/λ_{i+1} ≈ 1.1 inside a smooth spectrum whose
gaps are ≈ 1.01) count while the noisy ≈ 1.05 shoulders just below a big cliff do not. Modes
below ``rel_floor``·λ_1 (round-off) are ignored. Nothing here knows where cliffs are expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["CliffParams", "Cliff", "detect_cliffs", "cliff_segments", "format_positions", "gap_contrast"]


@dataclass(frozen=True)
class CliffParams:
    """Detector settings (config ``spectral.<task>.cliffs``, whose schema defaults the workflow
    uses; these library defaults equal the modular-addition ones, a test keeps them equal)."""

    min_ratio: float = 1.05
    min_contrast: float = 6.0
    window: int = 10
    trim: int = 2
    min_separation: int = 3
    max_cliffs: int | None = None
    rel_floor: float = 1e-9

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "CliffParams":
        return cls(**(cfg or {}))

    def __post_init__(self) -> None:
        if self.min_ratio < 1.0:
            raise ValueError(f"cliffs.min_ratio must be >= 1, got {self.min_ratio}")
        if self.min_contrast < 0 or self.window < 1 or self.trim < 0 or self.min_separation < 1:
            raise ValueError("cliffs: min_contrast >= 0, window >= 1, trim >= 0, min_separation >= 1 required")
        if self.max_cliffs is not None and self.max_cliffs < 1:
            raise ValueError(f"cliffs.max_cliffs must be >= 1 or null, got {self.max_cliffs}")


@dataclass(frozen=True)
class Cliff:
    """A detected drop after ``position`` eigenvalues: λ_pos / λ_pos+1 = ``ratio`` (1-based)."""

    position: int
    ratio: float
    contrast: float


def gap_contrast(eigenvalues: Sequence[float], window: int = 10, trim: int = 2,
                 rel_floor: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Log-gaps g (length k−1, g[i−1] = log λ_i/λ_{i+1}) and their contrast g / local baseline."""
    ev = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if not np.isfinite(ev).all():
        raise ValueError(f"eigenvalues hold {int((~np.isfinite(ev)).sum())} non-finite value(s) (NaN/inf); "
                         "no cliff can be detected in them")
    if ev.size and np.any(np.diff(ev) > 1e-9 * max(abs(ev[0]), 1e-300)):
        raise ValueError("eigenvalues must be sorted in descending order")
    keep = ev > rel_floor * ev[0] if ev.size and ev[0] > 0 else np.zeros(ev.size, bool)
    ev = ev[: int(np.argmin(keep)) if not keep.all() else ev.size]
    if ev.size < 2:
        return np.zeros(0), np.zeros(0)
    g = np.log(ev[:-1]) - np.log(ev[1:])
    contrast = np.zeros_like(g)
    for i in range(g.size):
        lo, hi = max(0, i - window), min(g.size, i + window + 1)
        neigh = np.sort(np.concatenate([g[lo:i], g[i + 1:hi]]))
        if trim and neigh.size > trim:
            neigh = neigh[:-trim]
        base = neigh.mean() if neigh.size else 0.0
        contrast[i] = g[i] / max(base, 1e-12)
    return g, contrast


def detect_cliffs(eigenvalues: Sequence[float], params: CliffParams | None = None, **overrides: Any) -> list[Cliff]:
    """Cliffs of a descending spectrum, sorted by position (see the module docstring).

    With ``max_cliffs`` only the largest drops (by ratio) are kept. Positions are counts:
    position 50 means the drop lies between the 50th and the 51st eigenvalue.
    """
    params = params or CliffParams()
    if overrides:
        params = CliffParams(**{**params.__dict__, **overrides})
    g, contrast = gap_contrast(eigenvalues, params.window, params.trim, params.rel_floor)
    hits = [Cliff(i + 1, float(np.exp(g[i])), float(contrast[i])) for i in range(g.size)
            if g[i] >= np.log(params.min_ratio) and contrast[i] >= params.min_contrast]
    kept: list[Cliff] = []
    for hit in sorted(hits, key=lambda c: c.ratio, reverse=True):  # larger drops first
        if all(abs(hit.position - k.position) >= params.min_separation for k in kept):
            kept.append(hit)
    hits = kept
    if params.max_cliffs is not None and len(hits) > params.max_cliffs:
        hits = sorted(hits, key=lambda c: c.ratio, reverse=True)[: params.max_cliffs]
    return sorted(hits, key=lambda c: c.position)


def cliff_segments(cliffs: Sequence[Cliff] | Sequence[int]) -> list[tuple[int, int]]:
    """Blocks of modes between consecutive cliffs: [(0, c1), (c1, c2), ...] (0-based, end exclusive).

    The modes below the last cliff form no block (they are the bulk, not a cliff).
    """
    positions = sorted(int(c.position if isinstance(c, Cliff) else c) for c in cliffs)
    starts = [0, *positions[:-1]]
    return [(s, e) for s, e in zip(starts, positions) if e > s]


def format_positions(cliffs: Sequence[Cliff]) -> str:
    """'10;50' style string of cliff positions ('' when none)."""
    return ";".join(str(c.position) for c in sorted(cliffs, key=lambda c: c.position))
