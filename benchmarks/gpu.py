"""The GPU checks of the kernel engine, as one short script for a machine with CUDA.

    python benchmarks/gpu.py --out benchmarks/runs/gpu.md     # ~5 min on one GPU
    python benchmarks/gpu.py --device cpu --quick             # the script's own smoke test

Parts (``--parts``, default all), each printed as it finishes and written to ``--out``:

* ``identity``: tiles of R drawn on the device against the CPU's, bit for bit (Gaussian and
  Rademacher; a weight, a bias, a conv weight; offsets that are not call boundaries), and a
  float64 proj-trntk computed on the device against the CPU (the same R; only the GEMMs'
  summation order differs, so ~1e-13).
* ``exact``: each family member of ``benchmarks/kernels.py`` on 48 samples, trntk / entk /
  proj-trntk (K = 512) in float32 on the device with TF32 off and on, against a float64 CPU
  reference: the largest relative error.
* ``speed``: exact trntk of every family member at its benchmark N (``--family-scale``) on
  the device, TF32 off and on: time (best of 2, synchronised), contraction GFLOP/s
  (``reps.STATS``) and kernel entries per second; proj-trntk (K = 10240) of the benchmark MLP
  at N = 1000 against its exact trntk (the issue's "within 5x" target).
* ``resnet18``: the paper's ResNet18 (CIFAR-10 shape, width 64, P = 11.2M) on the device:
  seconds per sample to form its gradient representations, and seconds per kernel entry
  to contract them (from ``compute_to_hdf5`` at N = B and 2B), then the GPU-hours of the paper's kernels
  (50,000 x 50,000 train, symmetric, plus 10,000 x 50,000 test) as ``compute_to_hdf5`` would
  stream them, against the paper's 389 A100-hours; the same for proj-trntk (K = 10240)
  against 1.12 hours.

No GPU was lent to the task that wrote this script; it was run with ``--device cpu --quick``
only. Where numbers look wrong, the parts are independent: ``--parts identity,exact`` first.
"""
from __future__ import annotations

import argparse
import datetime
import math
import pathlib
import tempfile
import time

import numpy as np
import torch

from ntkbench import kernels
from ntkbench.kernels import philox
from ntkbench.kernels.reps import STATS
from ntkbench.models import build

import kernels as bench  # benchmarks/kernels.py (this script's directory), not ntkbench.kernels

F64 = torch.float64
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 1) -> tuple[object, float]:
    best, out = math.inf, None
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return out, best


class tf32:
    """TF32 matmuls and convolutions on or off inside the block (restored after)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.on

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# -- parts -------------------------------------------------------------------------------------
def part_identity(device: torch.device) -> bool:
    say("## R on the device against the CPU\n")
    say("| stream | parameter | block | bit-identical |")
    say("| --- | --- | --- | --- |")
    ok = True
    for gen in (philox.gaussian_block, philox.rademacher_block):
        for name, k0, k1, j0, j1 in (("fc.weight", 0, 300, 0, 7850), ("fc.bias", 256, 300, 3, 10),
                                     ("conv.weight", 0, 257, 101, 4709)):
            cpu = gen(11, name, k0, k1, j0, j1, "cpu")
            dev = gen(11, name, k0, k1, j0, j1, device).cpu()
            same = torch.equal(cpu, dev)
            ok &= same
            say(f"| {gen.__name__} | {name} | R[{k0}:{k1}, {j0}:{j1}] | {'✓' if same else '✗'} |")
    model, x = bench.family_member("mlp-d3-w100", 40)
    for proj_type in ("gaussian", "rademacher"):
        k_cpu = kernels.compute(model, x, kind="proj-trntk", proj_dim=300, proj_type=proj_type, dtype=F64)
        k_dev = kernels.compute(model, x, kind="proj-trntk", proj_dim=300, proj_type=proj_type, dtype=F64, device=device)
        err = rel(k_dev, k_cpu)
        ok &= err < 1e-10
        say(f"\nproj-trntk ({proj_type}, float64, K = 300, mlp-d3-w100, N = 40): device vs CPU relative "
            f"difference {err:.1e} {'✓' if err < 1e-10 else '✗ (R differs?)'}")
    return ok


def part_exact(device: torch.device, names: list[str]) -> None:
    say("\n## Values on the device (float32) against a float64 CPU reference, N = 48\n")
    say("| model | kind | TF32 off | TF32 on |")
    say("| --- | --- | ---: | ---: |")
    for name in names:
        model, x = bench.family_member(name, 48)
        kinds = ["trntk", "proj-trntk"] + (["entk"] if name.startswith("mlp") or "tiny" in name else [])
        for kind in kinds:
            opts = {"proj_dim": 512} if kind.startswith("proj") else {}
            ref = kernels.compute(model, x, kind=kind, dtype=F64, **opts)
            errs = []
            for on in (False, True):
                with tf32(on):
                    errs.append(rel(kernels.compute(model, x, kind=kind, device=device, **opts), ref))
            say(f"| {name} | {kind} | {errs[0]:.1e} | {errs[1]:.1e} |")


def part_speed(device: torch.device, names: list[str], scale: float, quick: bool) -> None:
    say(f"\n## Exact trntk on the device (benchmark N x {scale:g}; best of 2)\n")
    say("| model | P | N | TF32 off | GFLOP/s | entries/s | TF32 on | GFLOP/s | entries/s |")
    say("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        model, x = bench.family_member(name)
        x = x[: max(16, int(x.shape[0] * scale))]
        N, P = x.shape[0], sum(p.numel() for p in model.parameters())
        kernels.compute(model, x[:16], kind="trntk", device=device)  # warm-up
        cells = []
        for on in (False, True):
            with tf32(on):
                STATS.reset()
                _, t = timed(lambda: kernels.compute(model, x, kind="trntk", device=device), device, 2)
                flops = STATS.flops / 2  # two runs were counted
            cells += [f"{t:.3f} s", f"{flops / t / 1e9:.0f}", f"{N * N / t:.2e}"]
        say(f"| {name} | {P:,} | {N} | " + " | ".join(cells) + " |")
    n = 200 if quick else 1000
    model, x = bench.mlp().eval(), torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    kernels.compute(model, x[:16], kind="proj-trntk", proj_dim=64, device=device)
    _, t_exact = timed(lambda: kernels.compute(model, x, kind="trntk", device=device), device, 2)
    K = 1024 if quick else 10240
    _, t_proj = timed(lambda: kernels.compute(model, x, kind="proj-trntk", proj_dim=K, device=device), device, 1)
    say(f"\nBenchmark MLP (P = 99,710), N = {n}: exact trntk {t_exact:.3f} s, proj-trntk (Gaussian, K = {K}) "
        f"{t_proj:.2f} s = {t_proj / t_exact:.1f}x exact (target: within 5x).")


def part_resnet18(device: torch.device, quick: bool) -> None:
    width = 8 if quick else 64
    model = build({"name": "resnet18", "input_shape": [3, 32, 32], "num_outputs": 10, "width": width}).eval()
    P = sum(p.numel() for p in model.parameters())
    mem = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 64e9
    block = max(1, int(0.4 * mem / (2 * 10 * P * 4)))  # a row and a column block in 40% of memory
    # Measured at the block size of the estimate, so per-block costs (HDF5 writes) scale alike.
    B = 8 if quick else block
    x = torch.randn(3 * B, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    say(f"\n## ResNet18 (width {width}, P = {P:,}) on {device}: paper-scale estimate\n")
    if quick:
        say("(--quick: a narrow ResNet18 measured at block 8, extrapolated at another block size; "
            "the numbers below only show that the part runs.)\n")
    kernels.compute(model, x[:4], kind="trntk", device=device)  # warm-up

    def streamed(n: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            _, t = timed(lambda: kernels.compute_to_hdf5(
                pathlib.Path(tmp) / "k.h5", model, x[:n], kind="trntk", block_size=B, batch_size=B,
                feature_cache_mb=0, progress=False, device=device), device)
        return t

    # compute_to_hdf5 with feature_cache_mb = 0 (ResNet18's materialised gradients, C P floats =
    # 447 MB per sample, fit no cache) forms a block's gradients in the diagonal pass, once per
    # row block, and once per block pair right of the diagonal; it contracts whole blocks.
    # N = B, 2B, 3B: 2B, 5B, 9B formations and B^2, 3B^2, 6B^2 entries, plus a fixed cost per
    # call (file, provenance, the engine's first-batch check). Solve t = c + a formed + b entries.
    times = [streamed(k * B) for k in (1, 2, 3)]
    c, a, b = np.linalg.solve(np.array([[1, 2 * B, B**2], [1, 5 * B, 3 * B**2], [1, 9 * B, 6 * B**2]], float),
                              np.array(times))
    say(f"trntk streamed (block {B}): " + ", ".join(f"{t:.2f} s for N = {k * B}" for k, t in zip((1, 2, 3), times))
        + f" -> {a * 1e3:.1f} ms per sample's gradients, {b * 1e6:.2f} us per kernel entry, {c:.2f} s per call"
        + ("" if a > 0 and b > 0 else " (not positive: timing noise dominates; rerun with a larger block)"))
    N, M = 50_000, 10_000  # CIFAR-10 train, test
    nb, nbt = math.ceil(N / block), math.ceil(M / block)
    # train x train: diagonal pass N, row blocks N, column blocks right of the diagonal N (nb - 1) / 2;
    # test x train: diagonal passes M + N, row blocks M, every train column block per test row block
    formed = 2 * N + N * (nb - 1) / 2 + (M + N) + M + nbt * N
    entries = nb * (nb + 1) / 2 * block**2 + M * N
    hours = (a * formed + b * entries) / 3600
    say(f"Paper kernels (50,000 x 50,000 train, 10,000 x 50,000 test), block {block}: {formed:.2e} gradient "
        f"formations, {entries:.2e} entries -> **{hours:.1f} GPU-hours** (paper: 389 A100-hours).")
    # proj-trntk at K = 10240 from two small runs at K0 = 1024 (each one chunk of samples):
    # t(n) = t_R + n t_s, with t_R drawing R (proportional to K) and t_s forming one sample's
    # gradients (a, from above) plus projecting them (proportional to K). R does not fit in
    # memory (K P floats = 458 GB at paper size), so it is drawn again for every chunk; the
    # tile cache (a quarter of free memory) is ignored, so this is an upper bound.
    K0, K = (64, 256) if quick else (1024, 10240)
    n1, n2 = (2, 4) if quick else (4, 12)
    kernels.compute(model, x[:2], kind="proj-trntk", proj_dim=K0, device=device)
    t_a = timed(lambda: kernels.compute(model, x[:n1], kind="proj-trntk", proj_dim=K0, device=device), device)[1]
    t_b = timed(lambda: kernels.compute(model, x[:n2], kind="proj-trntk", proj_dim=K0, device=device), device)[1]
    t_s0 = (t_b - t_a) / (n2 - n1)
    t_r0 = t_a - n1 * t_s0
    scale = K / K0
    t_s = a + (t_s0 - a) * scale
    t_r = t_r0 * scale
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 1 << 30
    chunk = max(1, min(2048, int(free / 4 // (10 * P * 4))))  # the projection's chunk budget; block_size 2048
    chunks = 2 * math.ceil(N / chunk) + math.ceil(M / chunk)  # train (twice: both kernels) and test
    hours_p = (chunks * t_r + (2 * N + M) * t_s) / 3600
    say(f"proj-trntk at K = {K0}: {t_a:.2f} s for {n1} samples, {t_b:.2f} s for {n2} -> drawing R {t_r0:.2f} s, "
        f"{t_s0 * 1e3:.1f} ms per sample; at K = {K}: R {t_r:.1f} s per chunk of {chunk} samples, "
        f"{t_s * 1e3:.1f} ms per sample -> **{hours_p:.2f} GPU-hours** for the {2 * N + M:,} projections "
        f"({chunks} chunks) of the two kernels (paper: 1.12 A100-hours).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--parts", default="identity,exact,speed,resnet18")
    ap.add_argument("--family", default="all", help="comma-separated family members (default all)")
    ap.add_argument("--family-scale", type=float, default=1.0, help="multiply each member's N in the speed part")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the script")
    ap.add_argument("--out", default=None, help="write the Markdown to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; run with --device cpu --quick to check the script")
    names = list(bench.FAMILY) if args.family == "all" else args.family.split(",")
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    say(f"<!-- {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {what}, torch {torch.__version__}, "
        f"generator {philox.GENERATOR} -->\n")
    parts = args.parts.split(",")
    if "identity" in parts:
        part_identity(device)
    if "exact" in parts:
        part_exact(device, names)
    if "speed" in parts:
        part_speed(device, names, args.family_scale * (0.1 if args.quick else 1.0), args.quick)
    if "resnet18" in parts:
        part_resnet18(device, args.quick)
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
