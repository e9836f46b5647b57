"""Spectral math: eigensolvers, flattening, cliff detection, Fourier families, rotation, overlaps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkbench.spectral import (
    CliffParams,
    alignment_heatmap,
    alignment_scores,
    cliff_segments,
    detect_cliffs,
    family_heatmap,
    flatten_entk,
    flatten_jacobian,
    format_positions,
    fourier_families,
    shift_laplacian,
    subspace_overlap,
    symmetry_rotation,
    tms_feature_vectors,
    topk_eigh,
    topk_from_jacobian,
    topk_matrix_free,
)
from ntkbench.spectral.eigen import topk_class_weighted


def _dense_top(k_mat: np.ndarray, k: int):
    w, v = np.linalg.eigh(k_mat)
    return w[::-1][:k], v[:, ::-1][:, :k]


def _assert_same_eigvecs(u: np.ndarray, v: np.ndarray, atol: float = 1e-6) -> None:
    # eigenvectors of simple eigenvalues agree up to sign
    dots = np.abs(np.sum(u * v, axis=0))
    np.testing.assert_allclose(dots, 1.0, atol=atol)


# ----------------------------------------------------------------------------- flattening
def test_flatten_entk_is_class_major_against_loop():
    rng = np.random.default_rng(0)
    n, m, c = 4, 3, 5
    k4 = rng.standard_normal((n, m, c, c))
    flat = flatten_entk(k4)
    assert flat.shape == (c * n, c * m)
    for i in range(n):
        for j in range(m):
            for a in range(c):
                for b in range(c):
                    assert flat[a * n + i, b * m + j] == k4[i, j, a, b]
    # torch and numpy agree, and match the SPEC's permute/reshape
    t = torch.from_numpy(k4)
    np.testing.assert_array_equal(flatten_entk(t).numpy(), flat)
    np.testing.assert_array_equal(t.permute(2, 0, 3, 1).reshape(n * c, m * c).numpy(), flat)


def test_flatten_jacobian_matches_flattened_entk():
    rng = np.random.default_rng(1)
    n, c, p = 6, 3, 7
    jac = rng.standard_normal((n, c, p))
    k4 = np.einsum("ncp,mdp->nmcd", jac, jac)
    jf = flatten_jacobian(jac)
    for i in range(n):
        for a in range(c):
            np.testing.assert_array_equal(jf[a * n + i], jac[i, a])
    np.testing.assert_allclose(jf @ jf.T, flatten_entk(k4), atol=1e-12)


# ----------------------------------------------------------------------------- eigensolvers
def test_topk_eigh_matches_numpy():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((40, 40))
    sym = a @ a.T
    res = topk_eigh(sym, 7)
    w, v = _dense_top(sym, 7)
    np.testing.assert_allclose(res.values, w, rtol=1e-10)
    _assert_same_eigvecs(res.vectors, v)


@pytest.mark.parametrize("shape", [(60, 9), (12, 30)])  # tall (Gram route) and wide (outer route)
def test_topk_from_jacobian_matches_dense(shape):
    rng = np.random.default_rng(3)
    jac = rng.standard_normal(shape)
    k = min(shape) - 1
    res = topk_from_jacobian(torch.from_numpy(jac), k, chunk=7)
    w, v = _dense_top(jac @ jac.T, k)
    np.testing.assert_allclose(res.values, w, rtol=1e-9)
    _assert_same_eigvecs(res.vectors, v)
    np.testing.assert_allclose(res.vectors.T @ res.vectors, np.eye(k), atol=1e-9)


def test_topk_from_jacobian_rank_deficient_gives_zero_modes():
    rng = np.random.default_rng(4)
    jac = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 5))  # rank 3 < P = 5
    res = topk_from_jacobian(jac, 5)
    w, _ = _dense_top(jac @ jac.T, 3)
    np.testing.assert_allclose(res.values[:3], w, rtol=1e-9)
    assert np.all(res.values[3:] == 0) and np.all(res.vectors[:, 3:] == 0)


def test_topk_matrix_free_matches_dense():
    rng = np.random.default_rng(5)
    jac = rng.standard_normal((80, 30))
    k_mat = jac @ jac.T
    res = topk_matrix_free(lambda v: jac @ (jac.T @ v), 80, 6, tol=1e-12)
    w, v = _dense_top(k_mat, 6)
    np.testing.assert_allclose(res.values, w, rtol=1e-8)
    _assert_same_eigvecs(res.vectors, v, atol=1e-6)
    assert res.info["matvecs"] > 0


def test_entk_operator_matches_engine_flattened_entk():
    from ntkbench import kernels
    from ntkbench.spectral.operator import entk_operator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(5, 4)
    importance = torch.tensor([1.0, 0.5, 0.25])
    jac = kernels.jacobian(model, x, importance=importance, dtype=torch.float64)
    dense = flatten_entk(torch.einsum("ncp,mdp->nmcd", jac, jac)).numpy()
    matvec, dim = entk_operator(model, x, importance=importance)
    assert dim == 15
    eye = np.eye(dim)
    op = np.stack([matvec(eye[:, i]) for i in range(dim)], axis=1)
    np.testing.assert_allclose(op, dense, atol=1e-10)


# ----------------------------------------------------------------------------- cliffs
def _staircase(levels, sizes, noise=0.002, seed=0):
    rng = np.random.default_rng(seed)
    ev = np.concatenate([lv * np.exp(-0.002 * np.arange(s)) for lv, s in zip(levels, sizes)])
    ev = ev * np.exp(noise * rng.standard_normal(ev.size))
    return np.sort(ev)[::-1]


def test_detects_plain_cliffs():
    ev = _staircase([100.0, 5.0, 1.0], [10, 40, 30])
    found = detect_cliffs(ev, CliffParams(min_ratio=1.5, min_contrast=4))
    assert [c.position for c in found] == [10, 50]
    assert format_positions(found) == "10;50"
    assert found[0].ratio > 10


def test_detects_subtle_cliff_without_inventing_others():
    # smooth decay with ~1% gaps, one 1.09 drop after 113 modes and a 2.5 drop after 57
    rng = np.random.default_rng(7)
    gaps = np.abs(0.01 + 0.004 * rng.standard_normal(199))
    gaps[0], gaps[56], gaps[112] = np.log(20), np.log(2.5), np.log(1.09)
    ev = 10 * np.exp(-np.concatenate([[0], np.cumsum(gaps)]))
    found = detect_cliffs(ev, CliffParams(min_ratio=1.05, min_contrast=6))
    assert [c.position for c in found] == [1, 57, 113]
    # without the subtle drop, nothing else appears
    gaps[112] = 0.01
    ev = 10 * np.exp(-np.concatenate([[0], np.cumsum(gaps)]))
    assert [c.position for c in detect_cliffs(ev, CliffParams(min_ratio=1.05, min_contrast=6))] == [1, 57]


def test_pure_noise_spectrum_has_no_cliffs():
    rng = np.random.default_rng(8)
    for seed in range(5):
        gaps = np.abs(0.01 + 0.004 * np.random.default_rng(seed).standard_normal(150))
        ev = np.exp(-np.concatenate([[0], np.cumsum(gaps)]))
        assert detect_cliffs(ev, CliffParams(min_ratio=1.05, min_contrast=6)) == []
    assert rng is not None


def test_shoulder_next_to_big_cliff_is_suppressed_and_max_cliffs():
    ev = np.array([10, 9.9, 9.8, 1.0, 0.93, 0.92, 0.915, 0.91, 0.905, 0.9, 0.1, 0.099, 0.098])
    found = detect_cliffs(ev, CliffParams(min_ratio=1.05, min_contrast=3, window=4, min_separation=2))
    assert [c.position for c in found] == [3, 10]
    assert [c.position for c in detect_cliffs(ev, CliffParams(min_ratio=1.05, min_contrast=3, window=4,
                                                             max_cliffs=1))] == [3]


def test_cliff_segments_and_validation():
    assert cliff_segments([1, 57, 113]) == [(0, 1), (1, 57), (57, 113)]
    assert cliff_segments([]) == []
    with pytest.raises(ValueError):
        detect_cliffs([1.0, 2.0, 0.5])
    with pytest.raises(ValueError):
        CliffParams(min_ratio=0.5)
    # zero/round-off tail is ignored rather than creating an infinite ratio
    assert [c.position for c in detect_cliffs([5, 4.9, 4.8, 1e-14, 0.0], CliffParams(min_contrast=0))] == []


# ----------------------------------------------------------------------------- features
def test_tms_feature_vectors_and_alignment_scores():
    rng = np.random.default_rng(9)
    x = rng.random((6, 3))
    z = tms_feature_vectors(x)
    assert z.shape == (18, 3)
    np.testing.assert_allclose(np.linalg.norm(z, axis=0), 1.0)
    np.testing.assert_allclose(z[6:12, 1], x[:, 1] / np.linalg.norm(x[:, 1]))
    assert np.all(z[:6, 1] == 0)
    # eigenvectors equal to the features (plus one unrelated) → perfect one-to-one alignment
    extra = np.zeros((18, 1)); extra[0, 0] = 1.0
    h = alignment_heatmap(z, np.concatenate([z, extra], axis=1))
    s = alignment_scores(h)
    assert s == {"alignment": 1.0, "mean_best_cos": pytest.approx(1.0), "diagonal_fraction": 1.0}
    # two features sharing their best eigenvector are not one-to-one
    s2 = alignment_scores(np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7]]))
    assert s2["alignment"] == pytest.approx(1 / 3) and s2["mean_best_cos"] == pytest.approx(0.8)


@pytest.mark.parametrize("p", [5, 7, 29])
def test_fourier_families_orthonormal_and_mutually_orthogonal(p):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], 1)
    fams = fourier_families(pairs, p)
    cols = np.concatenate([f.reshape(p * p, -1) for f in fams.values()], axis=1)
    assert cols.shape == (p * p, 4 * 2 * (p // 2)) == (p * p, 4 * (p - 1))  # 2(p-1) per cliff, 2 families each
    gram = cols.T @ cols / (p * p / 2)  # each column has squared norm p²/2
    np.testing.assert_allclose(gram, np.eye(cols.shape[1]), atol=1e-9)
    np.testing.assert_allclose(cols.mean(axis=0), 0.0, atol=1e-12)


def test_fourier_families_need_odd_p():
    with pytest.raises(ValueError):
        fourier_families(np.zeros((4, 2), int), 4)


def _grid(p):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    return np.stack([a.ravel(), b.ravel()], 1)


def test_shift_laplacians_act_on_the_right_variable():
    p = 7
    pairs = _grid(p)
    fams = fourier_families(pairs, p)
    for step, fam_moves, fam_fixed in [((1, 0), "a", "b"), ((0, 1), "b", "a"),
                                       ((4, 4), "a+b", "a-b"), ((4, -4), "a-b", "a+b")]:  # 4 = 2⁻¹ mod 7
        lap = shift_laplacian(p, step)
        np.testing.assert_allclose(lap, lap.T)
        for k in range(p // 2):
            f = fams[fam_moves][:, k, 0]
            np.testing.assert_allclose(lap @ f, (2 - 2 * np.cos(2 * np.pi * (k + 1) / p)) * f, atol=1e-9)
            np.testing.assert_allclose(lap @ fams[fam_fixed][:, k, 1], 0.0, atol=1e-9)


@pytest.mark.parametrize("kind,families", [("ab", ("a", "b")), ("sum_diff", ("a+b", "a-b"))])
def test_symmetry_rotation_recovers_families_from_a_scrambled_basis(kind, families):
    p = 11
    pairs = _grid(p)
    fams = fourier_families(pairs, p)
    block = np.concatenate([fams[f].reshape(p * p, -1) for f in families], axis=1)
    scrambled = block @ np.linalg.qr(np.random.default_rng(0).standard_normal((block.shape[1],) * 2))[0]
    before = np.concatenate([family_heatmap(fams[f], scrambled) for f in families])
    rotated, names = symmetry_rotation(scrambled, p, kind)
    assert names == families
    after = np.concatenate([family_heatmap(fams[f], rotated) for f in families])
    K = p // 2
    # after rotation: column 2k, 2k+1 of the first half belong to frequency k of the first family
    expected_rows = np.concatenate([np.repeat(np.arange(K), 2), K + np.repeat(np.arange(K), 2)])
    np.testing.assert_array_equal(after.argmax(axis=0), expected_rows)
    np.testing.assert_allclose(after.max(axis=0), 1.0, atol=1e-8)
    assert before.max(axis=0).mean() < 0.9
    # subspace overlap is rotation invariant: the block holds both families entirely
    for f in families:
        assert subspace_overlap(scrambled, fams[f]) == pytest.approx(1.0)
    other = [f for f in ("a", "b", "a+b", "a-b") if f not in families]
    for f in other:
        assert subspace_overlap(scrambled, fams[f]) == pytest.approx(0.0, abs=1e-12)


def test_subspace_overlap_of_random_subspace_is_its_dimension_fraction():
    p = 13
    fams = fourier_families(_grid(p), p)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((p * p, 40))
    ov = subspace_overlap(q, fams["a+b"])
    assert 0.1 < ov < 0.4  # ≈ 40 / 169


def test_topk_class_weighted_matches_scaled_dense():
    rng = np.random.default_rng(11)
    n, c, p = 7, 4, 9
    jac = rng.standard_normal((n, c, p))
    weights = [np.ones(c), 0.8 ** (0.15 * np.arange(c)), np.array([1.0, 0.0, 0.5, 2.0])]
    res = topk_class_weighted(torch.from_numpy(jac), 6, weights)
    for w, r in zip(weights, res):
        jf = flatten_jacobian(jac * w[None, :, None])
        wd, vd = _dense_top(jf @ jf.T, 6)
        np.testing.assert_allclose(r.values, wd, rtol=1e-9)
        _assert_same_eigvecs(r.vectors, vd)
