"""Spectral feature identification (SPEC §4, papers 002/003): top-k eigensolvers for flattened
eNTKs (dense, Jacobian Gram, matrix-free Lanczos), cliff detection, ground-truth features,
Fourier families, the symmetry rotation, subspace overlaps and alignment scores.
"""
from ntkbench.spectral.cliffs import Cliff, CliffParams, cliff_segments, detect_cliffs, format_positions
from ntkbench.spectral.eigen import (
    TopEig,
    flatten_entk,
    flatten_jacobian,
    topk_class_weighted,
    topk_eigh,
    topk_from_jacobian,
    topk_matrix_free,
    unflatten_vector,
)
from ntkbench.spectral.features import (
    FAMILIES,
    alignment_heatmap,
    alignment_scores,
    family_heatmap,
    fourier_families,
    fourier_family,
    shift_laplacian,
    subspace_overlap,
    symmetry_rotation,
    tms_feature_vectors,
)

__all__ = [
    "Cliff", "CliffParams", "cliff_segments", "detect_cliffs", "format_positions",
    "TopEig", "flatten_entk", "flatten_jacobian", "topk_class_weighted", "topk_eigh", "topk_from_jacobian", "topk_matrix_free",
    "unflatten_vector",
    "FAMILIES", "alignment_heatmap", "alignment_scores", "family_heatmap", "fourier_families",
    "fourier_family", "shift_laplacian", "subspace_overlap", "symmetry_rotation", "tms_feature_vectors",
]
