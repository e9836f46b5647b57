"""The projection's random generator (Philox4x32-10 + exact Box-Muller) and the projectors.

Device independence is tested three ways: Random123's known-answer vectors; a NumPy twin of
the generator (same operation sequence, another implementation of IEEE arithmetic) that must
agree bit for bit, in the float32 entries and in the float64 deviates before their rounding;
and, where CUDA exists, CPU against CUDA.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ntkbench import kernels
from ntkbench.kernels import philox, projection
from ntkbench.kernels.engine import KernelOptions
from ntkbench.kernels.forward import trainable_parameters
from ntkbench.kernels.projection import BlockProjector, KroneckerProjector, kronecker_plan
from ntkbench.kernels.reps import DenseGrad, OuterGrad
from ntkbench.kernels.streaming import identity_options
from tests.kernel_models import MLP, SmallCNN, brute_jacobian

F64 = torch.float64

# Random123 kat_vectors (philox4x32 10 rounds): counter, key -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


# -- the NumPy twin: the same operation sequence as ntkbench.kernels.philox -----------------
def np_philox(ctr, key, rounds=10):
    m32 = 0xFFFFFFFF
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.int64) for c in ctr)
    k0, k1 = key

    def mulhilo(a, m):
        hi = (a >> 16) * m
        lo = (a & 0xFFFF) * m
        lo = lo + ((hi & 0xFFFF) << 16)
        hi = (hi >> 16) + (lo >> 32)
        return hi, lo & m32

    for r in range(rounds):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & m32, (k1 + 0xBB67AE85) & m32
        hi0, lo0 = mulhilo(c0, 0xD2511F53)
        hi1, lo1 = mulhilo(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def np_horner(x, coef):
    p = x * coef[-1]
    for c in coef[-2:0:-1]:
        p = (p + c) * x
    return p + coef[0]


def np_box_muller(w_r, w_a):
    v = w_r * 2 + 1
    bits = v.astype(np.float64).view(np.int64)
    hx = (bits >> 32) + (0x3FF00000 - 0x3FE6A09E)
    e = ((hx >> 20) - (0x3FF + 33)).astype(np.float64)
    hx = (hx & 0x000FFFFF) + 0x3FE6A09E
    m = ((hx << 32) | (bits & 0xFFFFFFFF)).view(np.float64)
    s = (m - 1.0) / (m + 1.0)
    ln_u = e * philox._LN2 + np_horner(s * s, philox._LOG_COEF) * s * 2.0
    r = np.sqrt(ln_u * -2.0)
    octant = w_a >> 29
    frac = (w_a & ((1 << 29) - 1)) ^ ((-(octant & 1)) & ((1 << 29) - 1))
    a = (frac.astype(np.float64) + 0.5) * (2.0 ** -29 * philox._PI_4)
    a2 = a * a
    sn = np_horner(a2, philox._SIN_COEF) * a
    cs = np_horner(a2, philox._COS_COEF)
    swap = (((octant + 1) >> 1) & 1).astype(np.float64)
    keep = 1.0 - swap
    cos_t = (cs * keep + sn * swap) * (1 - 2 * (((octant + 2) >> 2) & 1)).astype(np.float64)
    sin_t = (sn * keep + cs * swap) * (1 - 2 * (octant >> 2)).astype(np.float64)
    return cos_t * r, sin_t * r


def np_gaussian(seed, name, k0, k1, j0, j1):
    key = philox.stream_key(seed, name)
    q = np.arange(j0 // 4, -(-j1 // 4), dtype=np.int64)[None, :]
    k = np.arange(k0, k1, dtype=np.int64)[:, None]
    w = np_philox((q & 0xFFFFFFFF, q >> 32, k, np.zeros_like(k)), key)
    z = np.stack(np_box_muller(w[0], w[1]) + np_box_muller(w[2], w[3]), axis=2).astype(np.float32)
    z = z.reshape(k1 - k0, -1)
    return z[:, j0 - (j0 // 4) * 4:][:, : j1 - j0]


def np_rademacher(seed, name, k0, k1, j0, j1):
    key = philox.stream_key(seed, name)
    q = np.arange(j0 // 128, -(-j1 // 128), dtype=np.int64)[None, :]
    k = np.arange(k0, k1, dtype=np.int64)[:, None]
    w = np.stack(np_philox((q & 0xFFFFFFFF, q >> 32, k, np.ones_like(k)), key), axis=2)
    bits = (w[..., None] >> np.arange(32)) & 1
    z = (1 - 2 * bits).astype(np.float32).reshape(k1 - k0, -1)
    return z[:, j0 - (j0 // 128) * 128:][:, : j1 - j0]


# -- the generator ----------------------------------------------------------------------------
@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    got = philox.philox4x32([torch.tensor([c], dtype=torch.int64) for c in ctr], key)
    assert [int(g) for g in got] == list(want)
    assert [int(g[0]) for g in np_philox([[c] for c in ctr], key)] == list(want)
    assert [int(g[0]) for g in philox._philox4x32_cpu(*[np.array([c]) for c in ctr[:3]], ctr[3], key)] == list(want)


@pytest.mark.parametrize("rounds", [7, 10])  # the CPU version alternates its word order by round
def test_cpu_philox_matches_tensor_version(rounds):
    rng = np.random.default_rng(rounds)
    for shapes in [((5, 7), (5, 7), (5, 7)), ((1, 9), (1, 9), (4, 1))]:
        ctr = [rng.integers(0, 2**32, size=sh) for sh in shapes]
        c3, key = int(rng.integers(0, 2**32)), tuple(int(v) for v in rng.integers(0, 2**32, 2))
        want = philox.philox4x32([torch.from_numpy(c) for c in ctr] + [c3], key, rounds=rounds)
        got = philox._philox4x32_cpu(*ctr, c3, key, rounds=rounds)
        for w, g in zip(want, got):
            assert g.shape == (5, 7) if shapes[0] == (5, 7) else g.shape == (4, 9)
            assert np.array_equal(w.expand(g.shape).numpy(), g.astype(np.int64))


def test_float64_deviates_match_twin_bit_for_bit():
    """The deviates before their rounding to float32: a sqrt 1 ulp off (torch 2.13.0's CPU
    float64 sqrt is, on ~1 % of these radii) shows here, where the float32 entries would hide
    it but for one entry in ~10^10."""
    rng = np.random.default_rng(0)
    w = rng.integers(0, 2**32, size=(4, 1 << 16))
    got = philox._box_muller(torch.from_numpy(w[0]), torch.from_numpy(w[1])) + philox._box_muller(
        torch.from_numpy(w[2]), torch.from_numpy(w[3]))
    want = np_box_muller(w[0], w[1]) + np_box_muller(w[2], w[3])
    for g, t in zip(got, want):
        assert g.dtype == F64 and np.array_equal(g.numpy().view(np.int64), t.view(np.int64))


def test_sqrt_check():
    """Every device's sqrt is checked once against math.sqrt; one that is not correctly
    rounded is an error naming the device, never a different R."""
    philox._check_sqrt(lambda v: np.sqrt(np.asarray(v)).tolist(), "numpy")
    ulp_off = lambda v: [math.sqrt(x) if i % 7 else math.nextafter(math.sqrt(x), 0.0) for i, x in enumerate(v)]
    with pytest.raises(RuntimeError, match="sqrt on fake:0 is not correctly rounded"):
        philox._check_sqrt(ulp_off, "fake:0")


def test_numpy_twin_is_bit_identical(monkeypatch):
    monkeypatch.setattr(philox, "CPU_CHUNK", 1 << 10)  # several generation steps per block
    for seed, name, k0, k1, j0, j1 in [(0, "net.0.weight", 0, 37, 0, 1001), (12345, "fc.bias", 250, 300, 7, 523)]:
        want = np_gaussian(seed, name, k0, k1, j0, j1)
        got = philox.gaussian_block(seed, name, k0, k1, j0, j1).numpy()
        assert got.dtype == np.float32 and got.shape == (k1 - k0, j1 - j0)
        assert np.array_equal(got.view(np.int32), want.view(np.int32))
        want = np_rademacher(seed, name, k0, k1, j0, j1)
        for little in (True, False):  # the byte path and the word path (big-endian hosts)
            monkeypatch.setattr(philox, "LITTLE_ENDIAN", little)
            got = philox.rademacher_block(seed, name, k0, k1, j0, j1).numpy()
            assert np.array_equal(got, want) and set(np.unique(got)) == {-1.0, 1.0}


def test_entries_are_a_function_of_position_only(monkeypatch):
    """Any sub-block, however it is chunked, is the slice of a larger block (so R for K is the
    first K rows of R for a larger K); streams of different names or seeds differ."""
    big = philox.gaussian_block(3, "w", 0, 64, 0, 3000)
    monkeypatch.setattr(philox, "CPU_CHUNK", 1 << 8)
    assert torch.equal(philox.gaussian_block(3, "w", 5, 20, 1001, 2222), big[5:20, 1001:2222])
    assert torch.equal(philox.rademacher_block(3, "w", 0, 9, 100, 900), philox.rademacher_block(3, "w", 0, 20, 0, 1000)[:9, 100:900])
    assert not torch.equal(philox.gaussian_block(3, "v", 0, 64, 0, 3000), big)
    assert not torch.equal(philox.gaussian_block(4, "w", 0, 64, 0, 3000), big)


def test_gaussian_distribution():
    z = philox.gaussian_block(0, "dist", 0, 250, 0, 4000).double().flatten().numpy()  # 1e6 draws
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    kurt = ((z - z.mean()) ** 4).mean() / z.var() ** 2
    assert abs(kurt - 3) < 5 * math.sqrt(24 / n)
    ks = stats.kstest(z, "norm")
    assert ks.statistic < 1.63 / math.sqrt(n), ks  # 1% critical value
    assert np.abs(z).max() < 6.8  # |z| <= sqrt(2 ln 2^33)
    # consecutive entries (two outputs of one Box-Muller pair) are uncorrelated
    pairs = z.reshape(-1, 2)
    assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 5 / math.sqrt(n / 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_generator_matches_cpu():
    for gen in (philox.gaussian_block, philox.rademacher_block):
        cpu = gen(7, "layer.weight", 3, 300, 11, 70000)
        gpu = gen(7, "layer.weight", 3, 300, 11, 70000, device="cuda")
        assert gpu.device.type == "cuda"
        assert torch.equal(gpu.cpu().view(torch.int32), cpu.view(torch.int32))


# -- the dense projector ----------------------------------------------------------------------
def test_tile_cache_does_not_change_values():
    torch.manual_seed(0)
    layout = [("a", (40, 30)), ("b", (40,)), ("c", (3, 700))]
    g = torch.randn(6, 2, sum(math.prod(s) for _, s in layout), dtype=F64)
    rep = DenseGrad(g, layout)
    cached = BlockProjector(300, "gaussian", 1, torch.device("cpu"), F64)
    uncached = BlockProjector(300, "gaussian", 1, torch.device("cpu"), F64, cache_bytes=0)
    first = cached.project(rep)
    tiles = cached.tiles_generated
    assert tiles > 0
    assert torch.equal(cached.project(rep), first) and cached.tiles_generated == tiles  # all hits
    assert torch.equal(uncached.project(rep), first) and torch.equal(uncached.project(rep), first)
    assert uncached.tiles_generated == 2 * tiles
    # the same projection as the dense R^T, and R for K = 100 is the first 100 rows of R for 300
    rt = BlockProjector(300, "gaussian", 1, torch.device("cpu"), F64).dense_matrix(layout)
    torch.testing.assert_close(first, g @ rt)
    small = BlockProjector(100, "gaussian", 1, torch.device("cpu"), F64)
    for name, shape in layout:
        for b in range(len(small.row_blocks(shape))):
            assert torch.equal(small.tile(name, shape, b, 0), cached.tile(name, shape, b, 0)[:100])


@pytest.mark.parametrize("proj_type", ["gaussian", "rademacher"])
def test_float32_tiles_of_odd_sized_parameters(proj_type):
    """Row blocks that do not end on a generator call boundary (7 x 5 = 35 entries: not a
    multiple of 4 Gaussians or 128 signs per call) give contiguous tiles, so float32 projected
    kernels work (they failed with a view error) and agree with float64."""
    proj = BlockProjector(20, proj_type, 1, torch.device("cpu"), torch.float32)
    assert proj.tile("0.weight", (5, 7), 0, 0).is_contiguous()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x = torch.randn(6, 7)
    k32 = kernels.compute(model, x, kind="proj-trntk", proj_dim=20, proj_type=proj_type)
    k64 = kernels.compute(model, x, kind="proj-trntk", proj_dim=20, proj_type=proj_type, dtype=F64)
    torch.testing.assert_close(k32.double(), k64, rtol=1e-4, atol=1e-5)


def test_projection_chunks_do_not_change_values(monkeypatch):
    """Samples are projected in chunks of at most the device's budget of gradients (a quarter
    of a GPU's free memory, 1 GiB on the CPU): a tiny budget (one batch per chunk, R's tiles
    drawn again per chunk) gives the same kernel."""
    import importlib

    api = importlib.import_module("ntkbench.kernels.engine")
    torch.manual_seed(0)
    model, x, y = MLP(), torch.randn(9, 6), torch.randn(4, 6)
    opts = dict(kind="proj-trntk", proj_dim=300, seed=2, batch_size=3, dtype=F64, proj_cache_mb=0)
    whole = kernels.compute(model, x, y, **opts)
    monkeypatch.setattr(api, "default_cache_bytes", lambda device: 1)
    torch.testing.assert_close(kernels.compute(model, x, y, **opts), whole, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("block,embed_budget", [(1 << 16, 1 << 25), (24, 1 << 25), (24, 1)])
def test_row_blocks_and_merged_groups_match_dense_r(monkeypatch, block, embed_budget):
    """Projected kernels against brute-force Jacobians times the whole R, with row blocks small
    enough that parameters split into several (and consecutive small ones merge into one GEMM
    per group), and the embedding's gradient rows built once for all tiles or per tile."""
    from tests.kernel_models import TokenNet, with_bn_stats

    monkeypatch.setattr(projection, "BLOCK_ELEMENTS", block)
    monkeypatch.setattr(projection, "_MAX_TEMP", embed_budget)
    torch.manual_seed(0)
    tokens = torch.randint(0, 11, (5, 5))
    tokens[0, 1] = 0
    for model, x in [(TokenNet(), tokens), (with_bn_stats(SmallCNN()), torch.randn(4, 1, 8, 8))]:
        layout = [(n, tuple(p.shape)) for n, p in trainable_parameters(model).items()]
        proj = BlockProjector(300, "gaussian", 5, torch.device("cpu"), F64)
        assert block > 1000 or any(len(proj.row_blocks(shape)) > 1 for _, shape in layout)
        rt = proj.dense_matrix(layout)  # (P, K), 2 tiles
        f = brute_jacobian(model, x) @ rt  # (B, C, K)
        for kind, fx in [("proj-trntk", f), ("proj-pntk", f.sum(1, keepdim=True))]:
            k0 = torch.einsum("ick,jck->ij", fx, fx)
            want = k0 / torch.sqrt(fx.pow(2).sum((1, 2))[:, None] * fx.pow(2).sum((1, 2))[None])
            got = kernels.compute(model, x, kind=kind, proj_dim=300, seed=5, dtype=F64)
            torch.testing.assert_close(got, want, msg=f"{type(model).__name__} {kind}")


def test_kernel_cache_on_off_identical():
    torch.manual_seed(0)
    model, x, y = MLP(), torch.randn(9, 6), torch.randn(4, 6)
    a = kernels.compute(model, x, y, "proj-trntk", proj_dim=300, seed=2, batch_size=3)
    b = kernels.compute(model, x, y, "proj-trntk", proj_dim=300, seed=2, batch_size=3, proj_cache_mb=0)
    assert torch.equal(a, b)


def test_generator_version_is_part_of_the_identity():
    proj = json.loads(identity_options(KernelOptions(kind="proj-trntk", proj_cache_mb=5)))
    assert proj["proj_generator"] == philox.GENERATOR and "proj_cache_mb" not in proj
    assert "proj_generator" not in json.loads(identity_options(KernelOptions(kind="trntk")))
    with pytest.raises(ValueError, match="proj_cache_mb"):
        KernelOptions(kind="proj-trntk", proj_cache_mb=-1)


# -- the Kronecker projector ------------------------------------------------------------------
def _kron_features(G: torch.Tensor, proj: KroneckerProjector, name: str, k_out: int, k_in: int) -> torch.Tensor:
    """Brute force: the explicit (k_out k_in x rows cols) matrix R_out (x) R_in times vec(G)."""
    rows, cols = G.shape[-2:]
    r = torch.kron(proj.factor(name, "out", k_out, rows), proj.factor(name, "in", k_in, cols))
    return G.reshape(*G.shape[:-2], rows * cols) @ r.T / math.sqrt(k_out * k_in)


def test_kronecker_plan():
    plan = kronecker_plan([("w1", 100, 785), ("w2", 10, 101), ("s", 7, 1)], 1024)
    assert [p[0] for p in plan] == ["w1", "w2", "s"]
    (_, _, _, o1, i1), (_, _, _, o2, i2), (_, _, _, o3, i3) = plan
    assert (o3, i3) == (7, 1)  # capped at its size (exact); its unused share goes to the others
    assert 480 <= o1 * i1 <= 508 and 480 <= o2 * i2 <= 508  # (1024 - 7) / 2 each, floored by factoring
    assert 0.5 < (o1 / i1) / (100 / 785) < 2 and 0.5 < (o2 / i2) / (10 / 101) < 2  # balanced compression
    big = kronecker_plan([("w1", 100, 785), ("w2", 10, 101)], 100000)
    assert big[1][3:] == (10, 101) and big[0][3] * big[0][4] <= 100000 - 1010
    with pytest.raises(ValueError, match="smaller than"):
        kronecker_plan([("a", 3, 3), ("b", 3, 3)], 1)


def test_kronecker_equals_brute_force():
    """Factorised (conv-like, L = 4 positions, bias column) and materialised (a 3-D weight and
    a 1-D parameter) blocks against R_out (x) R_in applied to the materialised gradients."""
    torch.manual_seed(0)
    B, C, L, dout, din_w = 3, 2, 4, 6, 5
    outer = OuterGrad(torch.randn(B, C, L, dout, dtype=F64),
                      torch.cat([torch.randn(B, L, din_w, dtype=F64), torch.ones(B, L, 1, dtype=F64)], 2),
                      None, din_w + 1, ("conv.weight", (dout, din_w)), "conv.bias")
    layout = [("lin.weight", (4, 3, 3)), ("norm.weight", (4,))]
    dense = DenseGrad(torch.randn(B, C, 40, dtype=F64), layout)
    proj = KroneckerProjector(20, 5, torch.device("cpu"), F64)
    got = proj.project_many([outer, dense])
    plan = {p[0]: p for p in proj.plan}
    assert set(plan) == {"conv.weight", "lin.weight", "norm.weight"}
    # [W | b] per sample and class, from the materialised gradient (weight rows, then bias)
    g = outer.dense()
    G = torch.cat([g[..., : dout * din_w].reshape(B, C, dout, din_w), g[..., dout * din_w:, None]], 3)
    want = [_kron_features(G, proj, "conv.weight", *plan["conv.weight"][3:])]
    want.append(_kron_features(dense.g[..., :36].reshape(B, C, 4, 9), proj, "lin.weight", *plan["lin.weight"][3:]))
    k_n = plan["norm.weight"][3]
    want.append(dense.g[..., 36:] @ proj.factor("norm.weight", "dense", k_n, 4).T / math.sqrt(k_n))
    torch.testing.assert_close(got, torch.cat(want, 2))


def test_kronecker_is_unbiased():
    """E over seeds of <Rg, Rg'> = <g, g'>, within 4 standard errors, and the exact kernel when
    every factor is square (identity)."""
    torch.manual_seed(1)
    B, L, dout, din = 2, 3, 8, 9
    d = torch.randn(B, 1, L, dout, dtype=F64)
    d[1] = d[1] * 0.5 + d[0]  # correlated samples: <g_0, g_1> well away from 0
    a = torch.randn(B, L, din, dtype=F64)
    a[1] = a[1] * 0.5 + a[0]
    rep = OuterGrad(d, a, None, din, ("w", (dout, din)))
    g = rep.dense()[:, 0]
    exact = float(g[0] @ g[1])
    est = []
    for seed in range(300):
        f = KroneckerProjector(16, seed, torch.device("cpu"), F64).project(rep)[:, 0]
        est.append(float(f[0] @ f[1]))
    est = np.array(est)
    se = est.std(ddof=1) / math.sqrt(len(est))
    assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)
    assert est.std() > 0.05 * abs(exact)  # a real estimator: it does vary with the seed
    f = KroneckerProjector(dout * din, 0, torch.device("cpu"), F64).project(rep)[:, 0]
    torch.testing.assert_close(f @ f.T, g @ g.T)


def test_kronecker_kernel_matches_brute_force_on_an_mlp():
    """proj-trntk with proj_type="kronecker" through kernels.compute: each Linear's [W | b]
    gradient projected by R_out (x) R_in, from brute-force Jacobians."""
    torch.manual_seed(0)
    model, x = MLP(), torch.randn(7, 6)
    K = 40
    got = kernels.compute(model, x, kind="proj-trntk", proj_type="kronecker", proj_dim=K, seed=3, dtype=F64)
    jac = brute_jacobian(model, x)  # (N, C, P), parameters in model order
    layers = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    names = [f"net.{i}.weight" for i, m in enumerate(model.net) if isinstance(m, torch.nn.Linear)]
    plan = {p[0]: p for p in kronecker_plan([(n, m.out_features, m.in_features + 1) for n, m in zip(names, layers)], K)}
    proj = KroneckerProjector(K, 3, torch.device("cpu"), F64)
    feats, off = [], 0
    for name, m in zip(names, layers):
        dout, din = m.out_features, m.in_features
        w = jac[..., off : off + dout * din].reshape(*jac.shape[:2], dout, din)
        b = jac[..., off + dout * din : off + dout * din + dout]
        off += dout * din + dout
        feats.append(_kron_features(torch.cat([w, b[..., None]], 3), proj, name, *plan[name][3:]))
    f = torch.cat(feats, 2)
    k0 = torch.einsum("ick,jck->ij", f, f)
    want = k0 / torch.sqrt(k0.diagonal()[:, None] * k0.diagonal()[None])
    torch.testing.assert_close(got, want)
    assert (got - kernels.compute(model, x, kind="trntk", dtype=F64)).abs().max() > 1e-3  # K < P: not exact


@pytest.mark.parametrize("build,shape", [(MLP, (6,)), (SmallCNN, (1, 8, 8))])
def test_kronecker_kernel_does_not_depend_on_the_path(build, shape):
    """The fast path (Linear layers factorised, convs materialised) and the generic one (all
    materialised) give the same Kronecker kernel: a weight and its bias are one [W | b] block
    on both (v1 split them where materialised: a different estimator per path)."""
    torch.manual_seed(0)
    model, x, y = build(), torch.randn((9,) + shape), torch.randn((4,) + shape)
    for args in ((x,), (y, x)):
        fast = kernels.compute(model, *args, kind="proj-trntk", proj_type="kronecker", proj_dim=60, seed=1, dtype=F64)
        generic = kernels.compute(model, *args, kind="proj-trntk", proj_type="kronecker", proj_dim=60, seed=1,
                                  dtype=F64, impl="generic")
        torch.testing.assert_close(fast, generic, rtol=1e-10, atol=1e-12)
    ident = json.loads(identity_options(KernelOptions(kind="proj-trntk", proj_type="kronecker")))
    assert ident["proj_estimator"] == projection.KRONECKER_ESTIMATOR
    assert "proj_estimator" not in json.loads(identity_options(KernelOptions(kind="proj-trntk")))
