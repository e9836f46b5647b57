"""Modular-addition eNTK analysis (SPEC §4.2): class-averaged kernels per checkpoint, cliffs,
Fourier-family alignment, symmetry rotation and the grokking overlap. Nothing assumes p = 29:
the expected cliff blocks and the Fourier families follow from p.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ntkbench import kernels
from ntkbench.spectral.cliffs import CliffParams, cliff_segments, detect_cliffs
from ntkbench.spectral.eigen import TopEig, topk_eigh, topk_matrix_free
from ntkbench.spectral.features import (
    FAMILIES,
    family_heatmap,
    fourier_families,
    subspace_overlap,
    symmetry_rotation,
)
from ntkbench.spectral.operator import entk_operator

__all__ = [
    "drop_ratio",
    "family_overlaps",
    "expected_cliffs",
    "class_averaged_kernels",
    "checkpoint_spectra",
    "cliff_table",
    "overlap_table",
    "CLIFF_TABLE_COLUMNS",
    "OVERLAP_TABLE_COLUMNS",
    "cliff_heatmaps",
    "full_entk_top",
]


def expected_cliffs(p: int) -> dict[str, tuple[int, int]]:
    """Where the paper's blocks sit for modulus p (0-based, end exclusive).

    One isolated top mode, then cliff 1 and cliff 2 of 4·⌊p/2⌋ = 2(p−1) modes each
    (cos and sin × k = 1..⌊p/2⌋ × two Fourier families).
    """
    size = 4 * (p // 2)
    return {"top": (0, 1), "cliff1": (1, 1 + size), "cliff2": (1 + size, 1 + 2 * size)}


def class_averaged_kernels(model: nn.Module, x: torch.Tensor, *, device: torch.device | str = "cpu",
                           batch_size: int = 1024) -> dict[str, np.ndarray]:
    """``{"total", <layer>...}``: (1/C) Σ_c K[:, :, c, c] = trntk0 / C, per parameter group and summed."""
    with torch.no_grad():
        num_classes = int(model(x[:1].to(device)).shape[1])
    parts = kernels.compute(model, x, kind="trntk0", layerwise=True, dtype=torch.float64,
                            device=device, batch_size=batch_size)
    out = {name: (k / num_classes).cpu().numpy() for name, k in parts.items()}
    return {"total": sum(out.values()), **out}


def checkpoint_spectra(model: nn.Module, x: torch.Tensor, states: dict[int, dict[str, torch.Tensor]], *,
                       top_k: int = 200, n_vectors: int = 128, device: torch.device | str = "cpu",
                       log: Any = None, kernels: Callable[..., dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Top-k eigenpairs of the class-averaged kernels (total and per layer) at every checkpoint.

    ``kernels(model, x, device=...)`` gives ``{"total": K, part: K_part, ...}`` (default
    :func:`class_averaged_kernels`, per layer; the transformer passes its layer groups).
    Returns arrays: epochs (T,), layers (L,), eigenvalues (T, L, k) and eigenvectors of the
    first ``n_vectors`` modes (T, L, N, n_vectors) as float32, plus timing.
    """
    kernels = class_averaged_kernels if kernels is None else kernels
    epochs = sorted(states)
    values, vectors, layers = [], [], None
    kernel_s = eig_s = 0.0
    for epoch in epochs:
        model.load_state_dict(states[epoch])
        model.eval()
        t0 = time.perf_counter()
        kers = kernels(model, x, device=device)
        t1 = time.perf_counter()
        layers = layers or list(kers)
        eigs = [topk_eigh(kers[name], top_k) for name in layers]
        t2 = time.perf_counter()
        kernel_s += t1 - t0
        eig_s += t2 - t1
        values.append(np.stack([e.values for e in eigs]))
        vectors.append(np.stack([e.vectors[:, :n_vectors] for e in eigs]).astype(np.float32))
        if log is not None:
            log.info("epoch %d: kernels %.2fs, eigh %.2fs; total λ1..3 = %s", epoch, t1 - t0, t2 - t1,
                     np.array2string(values[-1][0][:3], precision=4))
    return {"epochs": np.array(epochs), "layers": np.array(layers), "eigenvalues": np.stack(values),
            "eigenvectors": np.stack(vectors), "kernel_seconds": kernel_s, "eig_seconds": eig_s}


def family_overlaps(vectors: np.ndarray, fams: dict[str, np.ndarray]) -> dict[str, float]:
    """Subspace overlap of the columns of ``vectors`` (n, m) with each Fourier family's basis
    ``fams[f]``, as ``{family: overlap in [0, 1]}`` (see :func:`subspace_overlap`)."""
    return {f: subspace_overlap(vectors, fams[f]) for f in FAMILIES}


FAMILY_COLUMNS = {"a": "overlap_a", "b": "overlap_b", "a+b": "overlap_sum", "a-b": "overlap_diff"}
#: Columns of :func:`cliff_table` and :func:`overlap_table` rows, in order: build the data
#: frames with ``pd.DataFrame(rows, columns=...)`` so that a table without rows still has them.
CLIFF_TABLE_COLUMNS = ("epoch", "layer", "cliff", "start", "end", "size", "ratio", "contrast",
                       *FAMILY_COLUMNS.values())
OVERLAP_TABLE_COLUMNS = ("epoch", "layer", "block", "start", "end", "drop_ratio", "detected",
                         *FAMILY_COLUMNS.values())


def drop_ratio(ev: np.ndarray, end: int) -> float:
    """λ_end / λ_end+1 (1-based): the drop after the first ``end`` modes; NaN when the spectrum
    holds fewer than end + 1 values, inf when the next mode is zero or round-off below it."""
    if end < 1 or end >= len(ev) or not np.isfinite(ev[end - 1]) or not np.isfinite(ev[end]):
        return float("nan")
    if ev[end] <= 0:
        return float("inf") if ev[end - 1] > 0 else float("nan")
    return float(ev[end - 1] / ev[end])


def cliff_table(spectra: dict[str, Any], pairs: np.ndarray, p: int, params: CliffParams) -> list[dict[str, Any]]:
    """Detected blocks per (epoch, layer): rows epoch, layer, cliff, start, end (0-based, end
    exclusive; block ``cliff`` = 0 is the block above the first drop), the drop ratio at its
    end, the detector's contrast, and each Fourier family's overlap with the block's span.
    """
    fams = fourier_families(pairs, p)
    rows = []
    n_vec = spectra["eigenvectors"].shape[-1]
    for t, epoch in enumerate(spectra["epochs"]):
        for l, layer in enumerate(spectra["layers"]):
            found = detect_cliffs(spectra["eigenvalues"][t, l], params)
            for idx, ((start, end), cliff) in enumerate(zip(cliff_segments(found), found)):
                row = {"epoch": int(epoch), "layer": str(layer), "cliff": idx, "start": start, "end": end,
                       "size": end - start, "ratio": cliff.ratio, "contrast": cliff.contrast}
                if end <= n_vec:
                    ov = family_overlaps(spectra["eigenvectors"][t, l][:, start:end], fams)
                    row.update({FAMILY_COLUMNS[f]: v for f, v in ov.items()})
                else:
                    row.update({c: np.nan for c in FAMILY_COLUMNS.values()})
                rows.append(row)
    return rows


def overlap_table(spectra: dict[str, Any], pairs: np.ndarray, p: int, params: CliffParams) -> list[dict[str, Any]]:
    """Per (epoch, layer, expected block): the family overlaps of the p-derived blocks
    (cliff 1 = modes 1..2(p−1), cliff 2 = the next 2(p−1)), the drop ratio at the block's end and
    whether the detector found a cliff there. overlap_sum of cliff2 is the grokking tracker.

    Every (epoch, layer, block) has a row; when the spectrum holds too few eigenvectors for a
    block its overlaps are NaN, and too few eigenvalues make its drop ratio NaN.
    """
    fams = fourier_families(pairs, p)
    blocks = {k: v for k, v in expected_cliffs(p).items() if k != "top"}
    rows = []
    n_vec = spectra["eigenvectors"].shape[-1]
    for t, epoch in enumerate(spectra["epochs"]):
        for l, layer in enumerate(spectra["layers"]):
            ev = spectra["eigenvalues"][t, l]
            found = {c.position for c in detect_cliffs(ev, params)}
            for name, (start, end) in blocks.items():
                # A block beyond the stored eigenvectors / eigenvalues gets NaN, never a number
                # from a truncated block (config validation requires top_k >= 4p − 2).
                if end <= n_vec:
                    ov = family_overlaps(spectra["eigenvectors"][t, l][:, start:end], fams)
                else:
                    ov = {f: float("nan") for f in FAMILIES}
                rows.append({"epoch": int(epoch), "layer": str(layer), "block": name, "start": start,
                             "end": end, "drop_ratio": drop_ratio(ev, end),
                             "detected": end in found,
                             **{FAMILY_COLUMNS[f]: v for f, v in ov.items()}})
    return rows


def cliff_heatmaps(vectors: np.ndarray, pairs: np.ndarray, p: int) -> dict[str, np.ndarray]:
    """Family heatmaps (rows: 4 families × k = 1..⌊p/2⌋; columns: the block's eigenvectors) of
    the expected cliff 1 and cliff 2, before and after the symmetry rotation.

    Columns after rotation are ordered [first family…, second family…] (a, b for cliff 1;
    a+b, a−b for cliff 2), so a clean result is block-diagonal with two columns (cos, sin
    phases) per frequency. A block beyond the given eigenvectors is left out (its keys are
    missing), so the result may be empty.
    """
    fams = fourier_families(pairs, p)
    out = {}
    for name, kind in (("cliff1", "ab"), ("cliff2", "sum_diff")):
        start, end = expected_cliffs(p)[name]
        if end > vectors.shape[1]:
            continue
        block = vectors[:, start:end].astype(np.float64)
        rotated, _ = symmetry_rotation(block, p, kind)
        out[f"{name}_before"] = np.concatenate([family_heatmap(fams[f], block) for f in FAMILIES])
        out[f"{name}_after"] = np.concatenate([family_heatmap(fams[f], rotated) for f in FAMILIES])
    return out


def full_entk_top(model: nn.Module, x: torch.Tensor, k: int, *, dtype: torch.dtype = torch.float32,
                  tol: float = 1e-6, device: torch.device | str = "cpu") -> TopEig:
    """Top-k eigenpairs of the full class-major flattened eNTK ((N·C)², e.g. 24389² at p = 29) by
    Lanczos on v ↦ J (Jᵀ v) (one VJP + one JVP per product; neither K nor J is formed)."""
    matvec, dim = entk_operator(model, x, dtype=dtype, device=device)
    return topk_matrix_free(matvec, dim, k, tol=tol)
