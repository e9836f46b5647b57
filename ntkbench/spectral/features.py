"""Ground-truth feature vectors and how well eigenvectors line up with them.

* TMS (SPEC §4.1): feature a's vector in the class-major flattened space,
  z^a[c·N + n] = x_n[a] if c = a else 0, unit-normalised; heatmap H[a, i] = |⟨ẑ^a, ê_i⟩|;
  one-to-one alignment scores.
* Modular addition (SPEC §4.2): real Fourier families cos/sin(2πk·v/p), k = 1..⌊p/2⌋, for
  v ∈ {a, b, a+b, a−b}; phase-free alignment H[k, j] = ‖(ĉ_k·û_j, ŝ_k·û_j)‖; the rotation inside
  a cliff from the data set's cyclic symmetries; subspace overlap ‖Qᵀ F‖²_F / rank F.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "tms_feature_vectors",
    "alignment_heatmap",
    "alignment_scores",
    "FAMILIES",
    "fourier_family",
    "fourier_families",
    "family_heatmap",
    "orthonormal_basis",
    "subspace_overlap",
    "shift_laplacian",
    "symmetry_rotation",
]


# ----------------------------------------------------------------------------- TMS
def tms_feature_vectors(x: np.ndarray) -> np.ndarray:
    """(C·N, n) matrix whose column a is ẑ^a (class-major, C = n features, unit norm).

    A feature that is zero on every point gives a zero column (no direction to align with).
    """
    x = np.asarray(x, dtype=np.float64)
    n_points, n_feat = x.shape
    z = np.zeros((n_feat * n_points, n_feat))
    for a in range(n_feat):
        z[a * n_points:(a + 1) * n_points, a] = x[:, a]
    norms = np.linalg.norm(z, axis=0)
    return z / np.where(norms > 0, norms, 1.0)


def alignment_heatmap(features: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """H[a, i] = |⟨f̂_a, ê_i⟩| for feature columns f_a and eigenvector columns e_i (both normalised here)."""
    f = np.asarray(features, dtype=np.float64)
    e = np.asarray(vectors, dtype=np.float64)
    f = f / np.where((nf := np.linalg.norm(f, axis=0)) > 0, nf, 1.0)
    e = e / np.where((ne := np.linalg.norm(e, axis=0)) > 0, ne, 1.0)
    return np.abs(f.T @ e)


def alignment_scores(heatmap: np.ndarray) -> dict[str, float]:
    """Quantitative alignment of features (rows) with eigenvectors (columns).

    * ``alignment``: fraction of features whose best-matching eigenvector (largest |cos|) is the
      best match of no other feature (a one-to-one assignment);
    * ``mean_best_cos``: mean over features of that largest |cos|;
    * ``diagonal_fraction``: fraction of features a whose best match is eigenvector a (the
      paper's "feature a ↔ eigenvector a" diagonal), over min(rows, columns) features.
    """
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2 or h.size == 0:
        raise ValueError(f"alignment_scores needs a non-empty 2-d heatmap, got shape {h.shape}")
    best = h.argmax(axis=1)
    counts = np.bincount(best, minlength=h.shape[1])
    unique = counts[best] == 1
    diag_n = min(h.shape)
    return {
        "alignment": float(unique.mean()),
        "mean_best_cos": float(h.max(axis=1).mean()),
        "diagonal_fraction": float((best[:diag_n] == np.arange(diag_n)).mean()),
    }


# ----------------------------------------------------------------------------- Fourier
FAMILIES = ("a", "b", "a+b", "a-b")


def _check_odd(p: int) -> None:
    if p < 3 or p % 2 == 0:
        raise ValueError(f"Fourier families need an odd modulus p >= 3, got {p}")


def fourier_family(values: Sequence[int], p: int) -> np.ndarray:
    """(len(values), K, 2) array ``[cos, sin](2πk·v/p)``, k = 1..K = ⌊p/2⌋ (not normalised)."""
    _check_odd(p)
    v = np.asarray(values, dtype=np.int64) % p
    k = np.arange(1, p // 2 + 1)
    ang = 2 * np.pi * np.outer(v, k) / p
    return np.stack([np.cos(ang), np.sin(ang)], axis=-1)


def _family_values(pairs: np.ndarray, family: str, p: int) -> np.ndarray:
    a, b = pairs[:, 0], pairs[:, 1]
    table = {"a": a, "b": b, "a+b": (a + b) % p, "a-b": (a - b) % p}
    if family not in table:
        raise ValueError(f"unknown Fourier family {family!r}; choose one of {FAMILIES}")
    return table[family]


def fourier_families(pairs: np.ndarray, p: int, families: Sequence[str] = FAMILIES) -> dict[str, np.ndarray]:
    """{family: (n_points, K, 2)} for the given (a, b) pairs."""
    pairs = np.asarray(pairs)
    return {f: fourier_family(_family_values(pairs, f, p), p) for f in families}


def family_heatmap(family: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Phase-free alignment H[k, j] = ‖(ĉ_k·û_j, ŝ_k·û_j)‖ of a family (n, K, 2) with vectors (n, d)."""
    fam = np.asarray(family, dtype=np.float64)
    fam = fam - fam.mean(axis=0, keepdims=True)
    fam = fam / np.where((nf := np.linalg.norm(fam, axis=0, keepdims=True)) > 0, nf, 1.0)
    u = np.asarray(vectors, dtype=np.float64)
    u = u / np.where((nu := np.linalg.norm(u, axis=0)) > 0, nu, 1.0)
    proj = np.einsum("nkt,nd->ktd", fam, u)
    return np.sqrt((proj ** 2).sum(axis=1))


def orthonormal_basis(m: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis of the column span of ``m`` (SVD; rank-revealing)."""
    m = np.asarray(m, dtype=np.float64)
    if m.size == 0:
        return m.reshape(m.shape[0], 0)
    u, s, _ = np.linalg.svd(m, full_matrices=False)
    return u[:, s > rtol * max(s[0], 1e-300)]


def subspace_overlap(vectors: np.ndarray, family: np.ndarray, center: bool = True) -> float:
    """‖Qᵀ F‖²_F / rank F: the fraction of the family's span inside span(vectors) (0..1).

    ``family`` is (n, K, 2) or (n, r); it is mean-centred (``center``) and orthonormalised.
    """
    f = np.asarray(family, dtype=np.float64).reshape(np.shape(family)[0], -1)
    if center:
        f = f - f.mean(axis=0, keepdims=True)
    fq = orthonormal_basis(f)
    q = orthonormal_basis(vectors)
    if fq.shape[1] == 0:
        return 0.0
    return float(np.linalg.norm(q.T @ fq) ** 2 / fq.shape[1])


# ----------------------------------------------------------------------------- symmetry rotation
def shift_laplacian(p: int, step: tuple[int, int]) -> np.ndarray:
    """Laplacian 2I − T − Tᵀ of the graph joining (a, b) to (a, b) + step (mod p), on index a·p + b.

    A step along a coordinate with the other held fixed penalises variation in that
    coordinate only: step (1, 0) is L ⊗ I (L_a), (0, 1) is I ⊗ L (L_b); for the sum
    s = a + b and difference d = a − b, step (h, h) with h = 2⁻¹ mod p moves s by 1 at fixed d
    (L_sum) and (h, −h) moves d by 1 at fixed s (L_diff). Eigenvalue on a Fourier mode of
    frequency k in the moved coordinate: 2 − 2cos(2πk/p).
    """
    idx = np.arange(p * p)
    a, b = idx // p, idx % p
    target = ((a + step[0]) % p) * p + (b + step[1]) % p
    t = np.zeros((p * p, p * p))
    t[target, idx] = 1.0
    return 2 * np.eye(p * p) - t - t.T


def _half(p: int) -> int:
    return pow(2, -1, p)


def _steps(kind: str, p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    if kind == "ab":
        return (1, 0), (0, 1)
    if kind == "sum_diff":
        h = _half(p)
        return (h, h), (h, -h)
    raise ValueError(f"unknown symmetry rotation {kind!r}; use 'ab' or 'sum_diff'")


def symmetry_rotation(vectors: np.ndarray, p: int, kind: str = "ab") -> tuple[np.ndarray, tuple[str, str]]:
    """Rotate an orthonormalised cliff basis to line up with a pair of Fourier families.

    ``kind="ab"`` (cliff 1): orthonormalise the cliff (QR), diagonalise Qᵀ L_a Q; the lowest
    half of that spectrum is (nearly) constant in a, i.e. functions of b: diagonalise L_b
    there (sorting them by b-frequency); the upper half are functions of a, already sorted by
    a-frequency. ``kind="sum_diff"`` (cliff 2) does the same with the sum/difference
    Laplacians. Returns (rotated basis [first-family vectors, second-family vectors],
    (first family, second family)), e.g. ([a…, b…], ("a", "b")).
    """
    _check_odd(p)
    u = np.asarray(vectors, dtype=np.float64)
    if u.shape[0] != p * p:
        raise ValueError(f"vectors have {u.shape[0]} rows, expected p² = {p * p}")
    step1, step2 = _steps(kind, p)
    q, _ = np.linalg.qr(u)
    l1, l2 = shift_laplacian(p, step1), shift_laplacian(p, step2)
    _, w1 = np.linalg.eigh(q.T @ l1 @ q)
    q1 = q @ w1
    half = q.shape[1] // 2
    low, high = q1[:, :half], q1[:, half:]
    _, w2 = np.linalg.eigh(low.T @ l2 @ low)
    second = low @ w2
    families = ("a", "b") if kind == "ab" else ("a+b", "a-b")
    return np.concatenate([high, second], axis=1), families
