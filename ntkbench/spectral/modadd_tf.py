"""eNTK spectra of the modular-addition transformer through grokking (SPEC §4.2, last bullet).

The MLP analysis (:mod:`ntkbench.spectral.modadd`) knows where its blocks sit (2(p−1) modes
each); here nothing is assumed: blocks are the ones the cliff detector finds at each
checkpoint, the symmetry rotation is applied to each detected block with the family pair
({a, b} or {a+b, a−b}) that dominates it, and the grokking tracker is the overlap of the sum
family with fixed-size windows of top modes (sizes in units of one family's rank, p − 1),
which needs no cliff at all.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ntkbench import kernels
from ntkbench.spectral.cliffs import CliffParams, cliff_segments, detect_cliffs
from ntkbench.spectral.features import FAMILIES, family_heatmap, fourier_families, symmetry_rotation
from ntkbench.spectral.modadd import FAMILY_COLUMNS, drop_ratio, family_overlaps, checkpoint_spectra

__all__ = [
    "grouped_class_averaged_kernels",
    "grouped_checkpoint_spectra",
    "default_windows",
    "window_table",
    "WINDOW_TABLE_COLUMNS",
    "block_alignment",
    "ALIGNMENT_TABLE_COLUMNS",
]

WINDOW_TABLE_COLUMNS = ("epoch", "layer", "modes", "drop_ratio", *FAMILY_COLUMNS.values())
ALIGNMENT_TABLE_COLUMNS = ("epoch", "layer", "block", "start", "end", "size", "source", "rotation",
                           "best_before", "best_after", *FAMILY_COLUMNS.values())


def grouped_class_averaged_kernels(model: nn.Module, x: torch.Tensor, group_of: Callable[[str], str], *,
                                   device: torch.device | str = "cpu", batch_size: int = 1024,
                                   dtype: torch.dtype = torch.float64) -> dict[str, np.ndarray]:
    """``{"total", <group>...}``: trntk0 / C summed over the parameter groups (modules) that
    ``group_of`` maps to the same layer group, in first-seen order."""
    with torch.no_grad():
        num_classes = int(model(x[:1].to(device)).shape[1])
    parts = kernels.compute(model, x, kind="trntk0", layerwise=True, dtype=dtype, device=device,
                            batch_size=batch_size)
    out: dict[str, np.ndarray] = {}
    for name, k in parts.items():
        group = group_of(name)
        k = (k / num_classes).cpu().numpy()
        out[group] = out[group] + k if group in out else k
    return {"total": sum(out.values()), **out}


def grouped_checkpoint_spectra(model: nn.Module, x: torch.Tensor, states: dict[int, dict[str, torch.Tensor]],
                               group_of: Callable[[str], str], *, top_k: int = 200, n_vectors: int = 120,
                               device: torch.device | str = "cpu", log: Any = None) -> dict[str, Any]:
    """:func:`ntkbench.spectral.modadd.checkpoint_spectra` per layer group (``group_of`` maps a
    parameter group to its layer group): epochs (T,), layers (L,), eigenvalues (T, L, k),
    eigenvectors (T, L, N, n_vectors) float32, timing."""
    return checkpoint_spectra(model, x, states, top_k=top_k, n_vectors=n_vectors, device=device, log=log,
                              kernels=lambda m, xx, device: grouped_class_averaged_kernels(m, xx, group_of, device=device))


def default_windows(p: int) -> list[int]:
    """Window sizes of the overlap tracker: 1, 2 and 4 times one family's rank (p − 1)."""
    return [p - 1, 2 * (p - 1), 4 * (p - 1)]


def window_table(spectra: dict[str, Any], pairs: np.ndarray, p: int, windows: Sequence[int]) -> list[dict[str, Any]]:
    """Per (epoch, layer, window m): each Fourier family's overlap ‖Qᵀ F‖²_F / rank F with the
    span Q of the top m eigenvectors, and the drop λ_m / λ_m+1. Windows beyond the stored
    eigenvectors get NaN overlaps."""
    fams = fourier_families(pairs, p)
    n_vec = spectra["eigenvectors"].shape[-1]
    rows = []
    for t, epoch in enumerate(spectra["epochs"]):
        for l, layer in enumerate(spectra["layers"]):
            for m in windows:
                ov = (family_overlaps(spectra["eigenvectors"][t, l][:, :m], fams) if m <= n_vec
                      else {f: float("nan") for f in FAMILIES})
                rows.append({"epoch": int(epoch), "layer": str(layer), "modes": int(m),
                             "drop_ratio": drop_ratio(spectra["eigenvalues"][t, l], m),
                             **{FAMILY_COLUMNS[f]: v for f, v in ov.items()}})
    return rows


def _best(h: np.ndarray) -> float:
    """Mean over the block's vectors (columns) of their best family-frequency alignment."""
    return float(h.max(axis=0).mean())


def block_alignment(vectors: np.ndarray, eigenvalues: np.ndarray, pairs: np.ndarray, p: int,
                    params: CliffParams, *, max_blocks: int = 3, fallback: int | None = None,
                    ) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Fourier alignment of the detected blocks of one spectrum, before and after the symmetry
    rotation: up to ``max_blocks`` blocks of at least 2 modes that fit in the stored vectors.

    The rotation uses the family pair holding more of the block ({a, b}: kind "ab", else
    {a+b, a−b}: "sum_diff"). Without such a block, the top ``fallback`` modes are analysed
    instead (source "window"). Returns [(row, {"before", "after"} heatmaps (4·⌊p/2⌋, size))].
    """
    fams = fourier_families(pairs, p)
    n_vec = vectors.shape[1]
    blocks = [(s, e, "detected") for s, e in cliff_segments(detect_cliffs(eigenvalues, params))
              if e - s >= 2 and e <= n_vec][:max_blocks]
    if not blocks and fallback:
        blocks = [(0, min(fallback, n_vec), "window")]
    out = []
    for idx, (start, end, source) in enumerate(blocks):
        block = vectors[:, start:end].astype(np.float64)
        ov = family_overlaps(block, fams)
        kind = "ab" if ov["a"] + ov["b"] >= ov["a+b"] + ov["a-b"] else "sum_diff"
        rotated, _ = symmetry_rotation(block, p, kind)
        before = np.concatenate([family_heatmap(fams[f], block) for f in FAMILIES])
        after = np.concatenate([family_heatmap(fams[f], rotated) for f in FAMILIES])
        row = {"block": idx, "start": start, "end": end, "size": end - start, "source": source,
               "rotation": kind, "best_before": _best(before), "best_after": _best(after),
               **{FAMILY_COLUMNS[f]: v for f, v in ov.items()}}
        out.append((row, {"before": before, "after": after}))
    return out
