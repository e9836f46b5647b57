"""Top-k eigenpairs of (flattened) eNTKs without forming the dense matrix where it is large.

Three routes, all returning :class:`TopEig` (eigenvalues descending, unit eigenvectors as
columns, deterministic signs):

* :func:`topk_eigh` — a dense symmetric matrix (small cases, class-averaged N×N kernels).
* :func:`topk_from_jacobian` — K = J Jᵀ for a flattened Jacobian J ∈ R^{M×P}. When P < M the
  nonzero eigenpairs come from the P×P Gram G = Jᵀ J: G v = λ v ⇒ K (J v) = λ (J v), so
  u = J v / sqrt(λ). Cost O(M P²) instead of O(M³), memory O(P²) instead of O(M²).
* :func:`topk_matrix_free` — Lanczos (ARPACK) on a matrix-vector product, e.g.
  :func:`ntkbench.spectral.operator.entk_operator`, for when neither M² nor P² fits.

Flattening convention (SPEC §1): the (N, M, C, C) eNTK becomes (N·C, M·C) *class-major*,
row index c·N + n; a Jacobian (N, C, P) becomes (C·N, P) with the same row order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse.linalg
import torch

__all__ = [
    "TopEig",
    "flatten_entk",
    "flatten_jacobian",
    "unflatten_vector",
    "topk_eigh",
    "topk_from_jacobian",
    "topk_matrix_free",
    "topk_class_weighted",
]


@dataclass
class TopEig:
    """Top eigenpairs: ``values`` (k,) descending, ``vectors`` (M, k) orthonormal columns."""

    values: np.ndarray
    vectors: np.ndarray
    seconds: float = 0.0
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.values.shape[0])


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def flatten_entk(kernel: Any) -> Any:
    """(N, M, C, C) eNTK → (C·N, C·M) class-major: entry [c·N + n, c'·M + m] = K[n, m, c, c']."""
    if kernel.ndim != 4 or kernel.shape[2] != kernel.shape[3]:
        raise ValueError(f"flatten_entk expects a (N, M, C, C) kernel, got shape {tuple(kernel.shape)}")
    n, m, c, _ = kernel.shape
    if isinstance(kernel, torch.Tensor):
        return kernel.permute(2, 0, 3, 1).reshape(c * n, c * m)
    return np.ascontiguousarray(np.transpose(kernel, (2, 0, 3, 1))).reshape(c * n, c * m)


def flatten_jacobian(jac: Any) -> Any:
    """(N, C, P) Jacobian → (C·N, P), row c·N + n = g^c(x_n); then J Jᵀ = flatten_entk(eNTK)."""
    if jac.ndim != 3:
        raise ValueError(f"flatten_jacobian expects a (N, C, P) Jacobian, got shape {tuple(jac.shape)}")
    n, c, p = jac.shape
    if isinstance(jac, torch.Tensor):
        return jac.permute(1, 0, 2).reshape(c * n, p)
    return np.ascontiguousarray(np.transpose(jac, (1, 0, 2))).reshape(c * n, p)


def unflatten_vector(vec: Any, num_points: int) -> Any:
    """A class-major vector (C·N, ...) → (C, N, ...)."""
    c = vec.shape[0] // num_points
    if c * num_points != vec.shape[0]:
        raise ValueError(f"vector of length {vec.shape[0]} is not a multiple of N = {num_points}")
    return vec.reshape(c, num_points, *vec.shape[1:])


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each column positive (eigenvectors have no sign)."""
    if vectors.size == 0:
        return vectors
    idx = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _check_finite(a: np.ndarray | torch.Tensor, what: str) -> None:
    """Eigenpairs of a matrix with NaN/inf are meaningless (LAPACK returns NaN or fails obscurely)."""
    finite = torch.isfinite(a).all() if isinstance(a, torch.Tensor) else np.isfinite(a).all()
    if not bool(finite):
        raise ValueError(f"{what} holds non-finite values (NaN/inf); its eigenpairs would be meaningless")


def _check_k(k: int, dim: int) -> int:
    if k < 1:
        raise ValueError(f"number of eigenpairs must be >= 1, got {k}")
    return min(int(k), int(dim))


def topk_eigh(matrix: Any, k: int) -> TopEig:
    """Top ``k`` eigenpairs of a dense symmetric matrix (LAPACK, only the wanted subset)."""
    start = time.perf_counter()
    a = _to_numpy(matrix).astype(np.float64, copy=False)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"topk_eigh expects a square matrix, got shape {a.shape}")
    _check_finite(a, "topk_eigh: the matrix")
    n = a.shape[0]
    k = _check_k(k, n)
    a = torch.from_numpy(0.5 * (a + a.T))
    vals_t, vecs_t = torch.linalg.eigh(a)  # divide and conquer: fastest LAPACK route here
    vals = vals_t.numpy()[::-1][:k].copy()
    vecs = vecs_t.numpy()[:, ::-1][:, :k]
    return TopEig(vals, _fix_signs(np.ascontiguousarray(vecs)), time.perf_counter() - start, "dense")


def topk_from_jacobian(jac: Any, k: int, *, chunk: int = 8192) -> TopEig:
    """Top ``k`` eigenpairs of K = J Jᵀ for a flattened Jacobian ``jac`` (M, P), never forming K.

    When P <= M the P×P Gram Jᵀ J is accumulated in float64 over row chunks and diagonalised;
    eigenvectors of K are u = J v / sqrt(λ). Otherwise the M×M matrix J Jᵀ is the smaller one
    and is diagonalised directly. At most min(M, P) eigenpairs exist; modes whose eigenvalue is
    at round-off level (≤ 1e-12·λ_max) get eigenvalue 0 and a zero vector rather than noise.
    """
    start = time.perf_counter()
    j = jac if isinstance(jac, torch.Tensor) else torch.from_numpy(np.asarray(jac))
    if j.ndim != 2:
        raise ValueError(f"topk_from_jacobian expects a flattened (M, P) Jacobian, got {tuple(j.shape)}")
    _check_finite(j, "topk_from_jacobian: the Jacobian")
    m, p = j.shape
    k = _check_k(k, min(m, p))
    if p > m:
        jd = j.to(torch.float64)
        res = topk_eigh((jd @ jd.T).numpy(), k)
        res.method, res.seconds = "jacobian-outer", time.perf_counter() - start
        return res
    gram = torch.zeros(p, p, dtype=torch.float64)
    for lo in range(0, m, chunk):
        block = j[lo:lo + chunk].to(torch.float64)
        gram += block.T @ block
    g = topk_eigh(gram.numpy(), k)
    vals = np.clip(g.values, 0.0, None)
    good = vals > 1e-12 * max(vals[0], np.finfo(float).tiny)
    v = torch.from_numpy(np.ascontiguousarray(g.vectors[:, good]))
    u = np.zeros((m, k))
    cols = []
    for lo in range(0, m, chunk):
        cols.append((j[lo:lo + chunk].to(torch.float64) @ v).numpy())
    if good.any():
        u[:, good] = np.concatenate(cols, axis=0) / np.sqrt(vals[good])
    vals = np.where(good, vals, 0.0)
    return TopEig(vals, _fix_signs(u), time.perf_counter() - start, "jacobian-gram",
                  {"gram_size": p})


def topk_class_weighted(jac: Any, k: int, class_weights: Sequence[Any]) -> list[TopEig]:
    """Top ``k`` eigenpairs of the class-major flattened eNTK of D_w J for several class weightings.

    ``jac`` is a (N, C, P) Jacobian; each entry of ``class_weights`` is a length-C vector w and
    defines K_w = flatten(D_w J)(D_w J)ᵀ with g^c multiplied by w_c (e.g. w_c = I_c^{β/2} for an
    importance sweep). The per-class Grams J_cᵀ J_c are computed once and summed with weights
    w_c², so a sweep over β costs one Gram's worth of work instead of one per β. Requires
    P <= N·C (the Gram route); eigenvectors u = D_w J v / sqrt(λ), rows class-major.
    """
    start = time.perf_counter()
    j = jac if isinstance(jac, torch.Tensor) else torch.from_numpy(np.asarray(jac))
    if j.ndim != 3:
        raise ValueError(f"topk_class_weighted expects a (N, C, P) Jacobian, got {tuple(j.shape)}")
    _check_finite(j, "topk_class_weighted: the Jacobian")
    n, c, p = j.shape
    if p > n * c:
        raise ValueError(f"topk_class_weighted needs P <= N·C (got P={p}, N·C={n * c}); use topk_from_jacobian")
    weights = [torch.as_tensor(np.asarray(w, dtype=np.float64)).flatten() for w in class_weights]
    for w in weights:
        if w.numel() != c:
            raise ValueError(f"class weights have {w.numel()} entries, the Jacobian has C={c} classes")
        _check_finite(w, "topk_class_weighted: class weights")
    grams = [np.zeros((p, p)) for _ in weights]
    for cls in range(c):
        block = np.ascontiguousarray(j[:, cls, :].to(torch.float64).numpy())
        g_c = block.T @ block  # NumPy recognises AᵀA and uses a symmetric rank-k update (half the flops)
        for gram, w in zip(grams, weights):
            if w[cls] != 0:
                gram += float(w[cls]) ** 2 * g_c
    shared = time.perf_counter() - start
    flat = flatten_jacobian(j.to(torch.float64))
    out = []
    for gram, w in zip(grams, weights):
        t0 = time.perf_counter()
        k_eff = _check_k(k, p)
        g = topk_eigh(gram, k_eff)
        vals = np.clip(g.values, 0.0, None)
        good = vals > 1e-12 * max(vals[0], np.finfo(float).tiny)
        u = np.zeros((n * c, k_eff))
        if good.any():
            v = torch.from_numpy(np.ascontiguousarray(g.vectors[:, good]))
            rows = w.repeat_interleave(n).view(-1, 1)
            u[:, good] = ((flat @ v) * rows).numpy() / np.sqrt(vals[good])
        vals = np.where(good, vals, 0.0)
        out.append(TopEig(vals, _fix_signs(u), shared / len(weights) + time.perf_counter() - t0,
                          "class-weighted-gram", {"gram_size": p}))
    return out


def topk_matrix_free(matvec: Callable[[np.ndarray], np.ndarray], dim: int, k: int, *,
                     tol: float = 1e-8, ncv: int | None = None, maxiter: int | None = None,
                     seed: int = 0) -> TopEig:
    """Top ``k`` eigenpairs of a symmetric PSD operator given only ``matvec`` (ARPACK Lanczos).

    ``matvec`` maps a float64 vector (dim,) to (dim,). The start vector is seeded, so results
    are reproducible. ``info["matvecs"]`` counts operator applications.
    """
    start = time.perf_counter()
    k = _check_k(k, dim - 1)
    count = {"n": 0}

    def mv(v: np.ndarray) -> np.ndarray:
        count["n"] += 1
        out = np.asarray(matvec(np.asarray(v, dtype=np.float64).ravel()), dtype=np.float64).ravel()
        if out.shape != (dim,):
            raise ValueError(f"topk_matrix_free: matvec returned shape {out.shape}, expected ({dim},)")
        _check_finite(out, f"topk_matrix_free: the operator's product #{count['n']}")
        return out

    op = scipy.sparse.linalg.LinearOperator((dim, dim), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(dim)
    ncv = min(dim, max(2 * k + 1, k + 32)) if ncv is None else ncv
    vals, vecs = scipy.sparse.linalg.eigsh(op, k=k, which="LA", tol=tol, ncv=ncv, v0=v0, maxiter=maxiter)
    order = np.argsort(vals)[::-1]
    return TopEig(vals[order], _fix_signs(vecs[:, order]), time.perf_counter() - start, "lanczos",
                  {"matvecs": count["n"], "ncv": ncv})
