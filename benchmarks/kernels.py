"""Speed of ntkbench's kernels against the standard ways of computing them.

Baselines, on the same model and data:
  (a) naive: one ``torch.autograd.grad`` per sample and class, flattened, then dot products;
  (b) torch.func: ``vmap(jacrev)`` Jacobians contracted per parameter with einsum (the
      PyTorch "Neural Tangent Kernels" tutorial, ``empirical_ntk_jacobian_contraction``);
  (c) for proj-trntk: (b)'s materialised Jacobians times a dense projection matrix.
(b)'s Jacobians are timed at the full N whenever one (N, C, P) Jacobian fits in 40% of the
available memory (else on the largest subset that does, scaled linearly); its contraction runs
on all rows unless that exceeds ~6 TFLOP (entk), then on a subset, scaled quadratically. (a)
runs on 100 samples, scaled the same way. The output says what was scaled. Achieved GFLOP/s of ntkbench's contractions come from the flop
estimates in ``ntkbench.kernels.reps.STATS``.

    python benchmarks/kernels.py            # N = 1000, both models, all kinds
    python benchmarks/kernels.py --quick    # N = 200, short baselines
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import time

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntkbench import kernels
from ntkbench.kernels.reps import STATS


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
        nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def cnn() -> nn.Module:
    """Three 3x3 convolutions (the last two with stride 2), then two linear layers."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def matmul_gflops(size: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    _, t = timed(lambda: [a @ b for _ in range(reps)])
    return 2 * size**3 * reps / t / 1e9


# -- baselines -----------------------------------------------------------------------------
def naive_grads(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters()]
    rows = []
    for n in range(x.shape[0]):
        out = model(x[n : n + 1])[0]
        rows.append(torch.stack([
            torch.cat([g.flatten() for g in torch.autograd.grad(out[c], params, retain_graph=True)])
            for c in range(out.shape[0])
        ]))
    return torch.stack(rows)


def func_jacobians(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def fnet_single(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(fnet_single), (None, 0))(params, x)
    return [j.flatten(2) for j in jac.values()]  # (N, C, P_param) per parameter


def contract_per_parameter(j1: list[torch.Tensor], j2: list[torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "entk":
        return sum(torch.einsum("Naf,Mbf->NMab", a, b) for a, b in zip(j1, j2))
    if kind == "pntk":
        k = sum(torch.einsum("Nf,Mf->NM", a.sum(1), b.sum(1)) for a, b in zip(j1, j2)) / j1[0].shape[1]
    else:
        k = sum(torch.einsum("Naf,Maf->NM", a, b) for a, b in zip(j1, j2))
    d = k.diagonal()
    return k / torch.sqrt(d[:, None] * d[None])


# Baseline contractions larger than this are timed on a subset of rows and scaled (N^2).
CONTRACT_FLOPS = 6e12


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); 8 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def extrapolate(t_linear: float, t_quadratic: float, n: int, N: int) -> float:
    return t_linear * N / n + t_quadratic * (N / n) ** 2


def run_model(name: str, model: nn.Module, N: int, quick: bool, proj_dim: int, results: list, repeat: int,
              kinds=("trntk", "entk", "pntk", "proj-trntk")) -> None:
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(N, 1, 28, 28)
    P = sum(p.numel() for p in model.parameters())
    C = 10
    print(f"\n== {name}: P = {P:,}, N = {N}, C = {C}")
    # Warm up every code path on a few samples (vmap tracing, allocator).
    for kind in ("trntk", "entk", "pntk"):
        kernels.compute(model, x[:8], kind=kind)
    kernels.compute(model, x[:8], kind="proj-trntk", proj_dim=64)

    # (a) naive loop on a subset
    n_a = min(N, 50 if quick else 100)
    grads, t_grad_a = timed(lambda: naive_grads(model, x[:n_a]))
    # (b) torch.func Jacobians, at the full N when one (N, C, P) Jacobian fits in memory.
    # The tutorial's empirical_ntk_jacobian_contraction(fnet, params, x1, x2) computes the
    # Jacobians of x1 and of x2; with x2 = x1 the two calls are identical, so one is timed
    # and counted twice (holding two copies would not fit at paper-like sizes).
    n_b = min(N, 100) if quick else min(N, max(16, int(0.4 * available_bytes() // (4 * C * P))))
    jac, t_one_jac = timed(lambda: func_jacobians(model, x[:n_b]))
    t_jac_b = 2 * t_one_jac

    for kind in kinds:
        opts = {"proj_dim": proj_dim} if kind == "proj-trntk" else {}
        # Best of `repeat` runs: the 2 shared cores make single timings noisy.
        best = None
        for _ in range(1 if kind == "proj-trntk" and not quick else repeat):
            STATS.reset()
            k_ours, t = timed(lambda: kernels.compute(model, x, kind=kind, **opts))
            if best is None or t < best[0]:
                best = (t, STATS.flops, STATS.seconds)
        t_ours, flops, t_contr = best
        if kind == "proj-trntk":
            # (c) dense projection of materialised Jacobians: time n_p rows of the Jacobian
            # times a slice of R^T, scale to N rows and P columns.
            pc, n_p = min(P, 20000), min(n_b, 64)
            rt = torch.randn(pc, proj_dim) / math.sqrt(proj_dim)
            jrows = torch.cat([j[:n_p] for j in jac], dim=2)[:, :, :pc].reshape(-1, pc)
            _, t_proj = timed(lambda: jrows @ rt)
            feats = torch.randn(n_p, C * proj_dim)
            _, t_gram = timed(lambda: feats @ feats.T)
            t_b = t_jac_b * N / n_b + t_proj * (N / n_p) * (P / pc) + t_gram * (N / n_p) ** 2
            t_a = float("nan")
            baseline_note = (f"dense R: Jacobians timed at n={n_b}, projection on {n_p} rows and a {pc}-row "
                             f"slice of R, scaled")
        else:
            g_flat = grads
            if kind == "entk":
                fn = lambda: torch.einsum("icp,jdp->ijcd", g_flat, g_flat)
            elif kind == "pntk":
                fn = lambda: (g_flat.sum(1) @ g_flat.sum(1).T) / C
            else:
                fn = lambda: g_flat.reshape(n_a, -1) @ g_flat.reshape(n_a, -1).T
            _, t_c_a = timed(fn)
            t_a = extrapolate(t_grad_a, t_c_a, n_a, N)
            # The contraction on n_c rows (all n_b unless that is more than ~CONTRACT_FLOPS:
            # entk at N = 1000 would take minutes), scaled quadratically to N.
            full_flops = 2.0 * n_b**2 * C * P * (C if kind == "entk" else 1)
            n_c = min(n_b, max(16, int(n_b * math.sqrt(CONTRACT_FLOPS / full_flops))))
            sub_jac = [j[:n_c] for j in jac]
            k_b, t_c_b = timed(lambda: contract_per_parameter(sub_jac, sub_jac, kind))
            t_b = t_jac_b * N / n_b + t_c_b * (N / n_c) ** 2
            sub = k_ours[:n_c, :n_c]
            err = ((sub - k_b).norm() / k_b.norm()).item()
            scaled = "" if n_b == N and n_c == N else ", scaled to N"
            baseline_note = (f"(a) n={n_a} extrapolated; (b) Jacobians n={n_b}, contraction n={n_c}{scaled}; "
                             f"rel. diff to (b) {err:.1e}")
        gf = flops / t_contr / 1e9 if t_contr > 0 else float("nan")
        ratio_a = t_a / t_ours
        ratio_b = t_b / t_ours
        print(f"[load {os.getloadavg()[0]:.1f}] ", end="")
        print(f"{kind:11s} ntkbench {t_ours:8.2f} s | naive (a) {t_a:9.1f} s ({ratio_a:7.1f}x) | "
              f"torch.func{' + dense R' if kind == 'proj-trntk' else ''} (b) {t_b:9.1f} s ({ratio_b:7.1f}x) | "
              f"contractions {flops / 1e9:8.1f} GFLOP in {t_contr:6.2f} s = {gf:6.1f} GFLOP/s   [{baseline_note}]")
        results.append((name, kind, t_ours, t_a, t_b, gf))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="number of samples N (default 1000; 200 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small N and short baselines")
    parser.add_argument("--proj-dim", type=int, default=10240)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--repeat", type=int, default=3, help="ntkbench timings are the best of this many runs")
    parser.add_argument("--kinds", default="trntk,entk,pntk,proj-trntk")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for ntkbench AND the baselines (default: torch's, = cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    N = args.n or (200 if args.quick else 1000)
    print(f"ntkbench kernel benchmark, {datetime.date.today()} on {platform.platform()}, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"machine matmul: {matmul_gflops():.1f} GFLOP/s (float32 2048^3)")
    results: list = []
    for name in args.models.split(","):
        run_model(name, {"mlp": mlp, "cnn": cnn}[name](), N, args.quick, args.proj_dim, results, args.repeat,
                  tuple(args.kinds.split(",")))
    print(f"\nmachine matmul after: {matmul_gflops():.1f} GFLOP/s, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
