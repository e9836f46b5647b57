"""Projected kernels: generator speed, the tile cache, and the error of each estimator.

Four parts (each can be skipped; the default runs the first three):

  generator  time to draw one (256 x 65536) tile of R with the device-independent Philox
             generator (ntkbench.kernels.philox), Gaussian and Rademacher, against the
             previous CPU path (torch.Generator + torch.randn / randint per tile).
  cache      proj-trntk (K = --proj-dim) on the benchmark MLP 784-100-100-100-10, random
             inputs: k(X, X) with N = --n, and k(Y, X) with |Y| = N/5 (two projection passes,
             so R's tiles are drawn twice without the cache and once with it), beside exact
             trntk and the lower bound N K P multiply-adds of the projection GEMMs.
  error      max and mean |k_proj - k_exact| over the off-diagonal entries of the normalised
             trntk, for the dense Gaussian R (the paper's estimator) and the Kronecker
             (LoGra) projection, K in --ks, on the MLP (random inputs) and a small CNN
             (sklearn's 8x8 digits), with the time of each kernel (errors averaged over
             --seeds).
  peers      proj-trntk and proj-pntk on the architecture family (benchmarks/kernels.py FAMILY,
             --members) at K in --peer-ks, against traker's CPU BasicProjector and dattri's
             random_project applied to the same per-sample per-class gradients, with the
             error of each against the exact kernel (benchmarks/projection_peers.py; needs
             the peers: pip install torch==2.13.0, then pip install -e ".[peers]").

    python benchmarks/projection.py                      # generator, cache, error; N = 1000 / 500
    python benchmarks/projection.py --parts error --quick
    .venv-peers/bin/python benchmarks/projection.py --parts peers --out benchmarks/runs/proj_peers.md
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import math
import platform
import time

import numpy as np
import torch
from torch import nn

from ntkbench import kernels
from ntkbench.kernels import philox
from ntkbench.kernels.forward import trainable_parameters
from ntkbench.kernels.projection import kronecker_plan

import kernels as bench  # benchmarks/kernels.py (this script's directory), not ntkbench.kernels


def small_cnn() -> nn.Module:
    """A small CNN for 8x8 digits (P = 9,802)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def best_of(fn, repeat: int) -> float:
    return min(timed(fn)[1] for _ in range(repeat))


def legacy_tile(seed: int, name: str, cols: int, gaussian: bool) -> torch.Tensor:
    """The previous generator: a blake2b-seeded torch.Generator per tile, drawn on the CPU."""
    digest = hashlib.blake2b(f"{seed}|{name}|0|0".encode(), digest_size=8).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    if gaussian:
        return torch.randn((256, cols), generator=gen)
    return torch.randint(0, 2, (256, cols), generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)


def part_generator(repeat: int) -> None:
    cols = 65536
    print(f"\n## Generator: one (256 x {cols}) tile, best of {repeat}\n")
    print("| generator | time | ns / entry |")
    print("| --- | --- | --- |")
    rows = [
        (f"Philox + exact Box-Muller, Gaussian (new, {DEVICE})", lambda: philox.gaussian_block(0, "w", 0, 256, 0, cols, DEVICE)),
        (f"Philox bits, Rademacher (new, {DEVICE})", lambda: philox.rademacher_block(0, "w", 0, 256, 0, cols, DEVICE)),
        ("torch.Generator + randn, Gaussian (old)", lambda: legacy_tile(0, "w", cols, True)),
        ("torch.Generator + randint, Rademacher (old)", lambda: legacy_tile(0, "w", cols, False)),
    ]
    for label, fn in rows:
        t = best_of(fn, repeat)
        print(f"| {label} | {t:.3f} s | {t / (256 * cols) * 1e9:.1f} |")
    if DEVICE.type != "cpu":
        same = all(torch.equal(gen(0, "w", 0, 256, 0, cols, DEVICE).cpu().view(torch.int32),
                               gen(0, "w", 0, 256, 0, cols).view(torch.int32))
                   for gen in (philox.gaussian_block, philox.rademacher_block))
        print(f"\nTiles on {DEVICE} bit-identical to the CPU's: {same}")


def part_cache(n: int, proj_dim: int, cache_mb: int) -> None:
    torch.manual_seed(0)
    model = bench.mlp()
    P = sum(p.numel() for p in trainable_parameters(model).values())
    x = torch.randn(n, 1, 28, 28)
    y = torch.randn(max(1, n // 5), 1, 28, 28)
    r_mb = proj_dim * P * 4 / 2**20
    print(f"\n## proj-trntk on the MLP (P = {P:,}), K = {proj_dim}, R = {r_mb:.0f} MB in float32\n")
    gemm = n * proj_dim * P
    print(f"Lower bound for k(X, X): the projection GEMMs, N K P = {gemm:.2e} multiply-adds "
          f"= {2 * gemm / 1e9:.0f} GFLOP.\n")
    print("| kernel | cache | time |")
    print("| --- | --- | --- |")
    _, t = timed(lambda: kernels.compute(model, x, kind="trntk", device=DEVICE))
    print(f"| exact trntk k(X, X), N = {n} | – | {t:.2f} s |")
    _, t = timed(lambda: kernels.compute(model, x, kind="proj-trntk", proj_dim=proj_dim, device=DEVICE))
    print(f"| proj-trntk k(X, X), N = {n} | default (1 GiB; one pass draws R once anyway) | {t:.1f} s |")
    a, t0 = timed(lambda: kernels.compute(model, y, x, kind="proj-trntk", proj_dim=proj_dim, proj_cache_mb=0, device=DEVICE))
    print(f"| proj-trntk k(Y, X), {len(y)} x {n} | off (R drawn for X and again for Y) | {t0:.1f} s |")
    b, t1 = timed(lambda: kernels.compute(model, y, x, kind="proj-trntk", proj_dim=proj_dim, proj_cache_mb=cache_mb, device=DEVICE))
    print(f"| proj-trntk k(Y, X), {len(y)} x {n} | {cache_mb} MB (R drawn once) | {t1:.1f} s |")
    print(f"\nCache on and off give bit-identical kernels: {torch.equal(a, b)}")


def digits(n: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    data = load_digits().data[:n].astype(np.float32) / 16.0
    return torch.from_numpy(data).view(-1, 1, 8, 8)


def part_error(n: int, ks: list[int], seeds: list[int], methods: list[str]) -> None:
    print(f"\n## Error against exact trntk (N = {n}, off-diagonal entries, averaged over seeds {seeds})\n")
    print("| model | P | K | method | features | max abs err | mean abs err | time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    torch.manual_seed(0)
    cases = [("MLP, random inputs", bench.mlp(), torch.randn(n, 1, 28, 28)), ("CNN, digits 8x8", small_cnn(), digits(n))]
    for label, model, x in cases:
        P = sum(p.numel() for p in trainable_parameters(model).values())
        exact, t = timed(lambda: kernels.compute(model, x, kind="trntk", device=DEVICE))
        iu = torch.triu_indices(len(x), len(x), 1)
        print(f"| {label} | {P:,} | – | exact | – | 0 | 0 | {t:.2f} s |")
        for k in ks:
            for method in methods:
                maxes, means, times = [], [], []
                for seed in seeds:
                    est, t = timed(lambda: kernels.compute(model, x, kind="proj-trntk", proj_dim=k, proj_type=method, seed=seed, device=DEVICE))
                    err = (est - exact)[iu[0], iu[1]].abs().cpu()
                    maxes.append(float(err.max()))
                    means.append(float(err.mean()))
                    times.append(t)
                feats = k
                if method == "kronecker":  # every layer of these models is a Linear/Conv2d with bias
                    blocks = [(n_, m.out_features, m.in_features + 1) if isinstance(m, nn.Linear) else
                              (n_, m.out_channels, m.in_channels * math.prod(m.kernel_size) + 1)
                              for n_, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
                    feats = sum(o * i for *_, o, i in kronecker_plan(blocks, k))
                print(f"| {label} | {P:,} | {k} | {method} | {feats} | {np.mean(maxes):.4f} | {np.mean(means):.4f} | "
                      f"{np.median(times):.2f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="generator,cache,error")
    ap.add_argument("--n", type=int, default=None,
                    help="N of the cache part (default 1000; error part: N/2; peers part: default each member's N)")
    ap.add_argument("--proj-dim", type=int, default=10240)
    ap.add_argument("--cache-mb", type=int, default=4200, help="budget of the cached run (R of K=10240 is 3.9 GB)")
    ap.add_argument("--ks", default="256,1024,4096,10240")
    ap.add_argument("--seeds", default="0", help="projection seeds of the error part (errors averaged)")
    ap.add_argument("--methods", default="gaussian,kronecker", help="proj_type values of the error part")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N = 200, K up to 1024 (peers: N = 64, K = 2048)")
    ap.add_argument("--members", default="all", help="peers part: family members, comma-separated (default all)")
    ap.add_argument("--peer-ks", default="2048,10240", help="peers part: projection dimensions K")
    ap.add_argument("--peer-projectors", default="ntkbench,traker,dattri",
                    help="peers part: projectors applied to the shared per-sample gradients")
    ap.add_argument("--chunk-mb", type=int, default=1024,
                    help="peers part: largest (B, C, P) float32 Jacobian chunk handed to a projector")
    ap.add_argument("--threads", default="free",
                    help="peers part: torch threads for every method: an int, or 'free' (the cores other "
                         "processes leave free, resolved once at the start)")
    ap.add_argument("--seed", type=int, default=0, help="peers part: the projections' seed (all three)")
    ap.add_argument("--out", default=None, help="peers part: also write its Markdown table to this file")
    ap.add_argument("--device", default="cpu", help="compute device, e.g. cuda (the model stays on the CPU)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    n, ks = args.n or 1000, [int(k) for k in args.ks.split(",")]
    if args.quick:
        n, ks, args.proj_dim = 200, [k for k in ks if k <= 1024], min(args.proj_dim, 1024)
    parts = args.parts.split(",")
    print(f"# benchmarks/projection.py, {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {DEVICE}, generator {philox.GENERATOR}")
    if "generator" in parts:
        part_generator(args.repeat)
    if "cache" in parts:
        part_cache(n, args.proj_dim, args.cache_mb)
    if "error" in parts:
        part_error(n // 2, ks, [int(v) for v in args.seeds.split(",")], args.methods.split(","))
    if "peers" in parts:
        import projection_peers

        peer_n, peer_ks = args.n, [int(k) for k in args.peer_ks.split(",")]
        if args.quick:
            peer_n, peer_ks = peer_n or 64, [k for k in peer_ks if k <= 2048] or [2048]
        members = list(bench.FAMILY) if args.members == "all" else args.members.split(",")
        threads = args.threads if args.threads == "free" else int(args.threads)
        projection_peers.part_peers(members, peer_n, peer_ks, args.repeat, threads, args.chunk_mb, args.seed,
                                    args.peer_projectors.split(","), args.out)


if __name__ == "__main__":
    main()
