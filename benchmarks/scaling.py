"""How ntkbench's kernels scale: memory per kind, time with N, kGLM fit time per solver, and
neural-tangents (JAX, CPU) side by side.

    python benchmarks/scaling.py                      # everything, defaults (~5 min on 2 idle cores)
    python benchmarks/scaling.py --parts memory,time  # some parts
    python benchmarks/scaling.py --nt-python /tmp/ntvenv/bin/python   # NT in another interpreter

Parts (``--parts``, default all):

* ``memory``: peak resident memory (RSS high-water mark) of one kernel computation, each in a
  fresh subprocess, as N grows: the streaming HDF5 path (``compute_to_hdf5``, block_size B),
  with its default feature cache and with ``feature_cache_mb=0``, against the in-memory ``compute``. The subprocess builds the model and the data, warms up on
  a few samples, then reads its high-water mark (``base``); the reported growth is the peak
  minus that base, so it excludes Python, torch and the input data.
* ``time``: exact trntk on the MLP 784-100-100-100-10 for N = 1k, 2k, 4k, ... up to
  ``--max-n`` (default 16k), in memory; time, and kernel entries (N^2) per second. Sizes whose
  predicted time exceeds ``--time-budget`` seconds are extrapolated (quadratic in N from the
  largest measured size) and marked as such.
* ``kglm``: ``KernelGLM.fit`` time per solver (sgd with the library defaults, lbfgs) against N,
  on the trntk kernel of Gaussian class clusters (10 classes, labels = cluster).
* ``nt``: neural-tangents' empirical NTK (trace over classes, structured derivatives, jit)
  against ntkbench's trntk0 on the same MLP weights and inputs (values are compared too).
  Optional: ``pip install -e .[bench-nt]``; skipped with a message when jax or
  neural-tangents cannot be imported.

Timings are best of ``--repeat`` runs; the machine's load average is printed beside each row.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

from ntkbench import kernels
from ntkbench.kernels.streaming import compute_to_hdf5
from ntkbench.kernels.threads import resolve_threads

import kernels as bench  # benchmarks/kernels.py (this script's directory), not ntkbench.kernels

HERE = os.path.dirname(os.path.abspath(__file__))


def mlp(seed: int = 0) -> nn.Module:
    """The benchmark MLP of benchmarks/kernels.py (P = 99,710), seeded, in eval mode."""
    torch.manual_seed(seed)
    return bench.mlp().eval()


def inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 784, generator=torch.Generator().manual_seed(seed))


def load() -> str:
    return "load " + "/".join(f"{v:.1f}" for v in os.getloadavg())


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- memory ----------------------------------------------------------------------------------
def _child(spec: dict) -> None:
    """One kernel computation; prints {"base_mb", "peak_mb", "seconds"} as JSON."""
    model, x = mlp(), inputs(spec["n"])
    opts = {"proj_dim": spec["proj_dim"]} if spec["kind"].startswith("proj") else {}
    kernels.compute(model, x[:32], kind=spec["kind"], **opts)  # libraries, primitive caches
    base = maxrss_mb()
    start = time.perf_counter()
    if spec["path"].startswith("hdf5"):
        cache = 0 if spec["path"] == "hdf5-nocache" else None
        with tempfile.TemporaryDirectory() as tmp:
            compute_to_hdf5(os.path.join(tmp, "k.h5"), model, x, kind=spec["kind"], block_size=spec["block"],
                            progress=False, feature_cache_mb=cache, **opts)
    else:
        kernels.compute(model, x, kind=spec["kind"], **opts)
    print(json.dumps({"base_mb": base, "peak_mb": maxrss_mb(), "seconds": time.perf_counter() - start}))


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


PATH_LABELS = {"hdf5": "compute_to_hdf5", "hdf5-nocache": "compute_to_hdf5, feature_cache_mb=0",
               "memory": "compute (in memory)"}


def part_memory(ns: list[int], kinds: list[str], block: int, proj_dim: int, proj_max_n: int, lines: list[str]) -> None:
    print(f"\n== peak memory (RSS growth over the warmed-up process), MLP, block_size {block}")
    lines += ["### Peak memory", "",
              f"RSS high-water mark minus the warmed-up process's (MLP 784-100³-10, block_size {block}"
              f"{f', proj K = {proj_dim}' if any(k.startswith('proj') for k in kinds) else ''}).", "",
              "| kind | path | " + " | ".join(f"N = {n}" for n in ns) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in ns) + " |"]
    for kind in kinds:
        for path in ("hdf5", "hdf5-nocache", "memory"):
            cells = []
            for n in ns:
                if kind.startswith("proj") and n > proj_max_n:
                    cells.append("–")
                    continue
                r = run_child({"kind": kind, "path": path, "n": n, "block": block, "proj_dim": proj_dim})
                grow = r["peak_mb"] - r["base_mb"]
                cells.append(f"{grow:.0f} MB ({r['seconds']:.1f} s)")
                print(f"[{load()}] {kind:10s} {path:6s} N={n:6d}: peak +{grow:7.1f} MB "
                      f"(base {r['base_mb']:.0f} MB), {r['seconds']:.2f} s", flush=True)
            lines.append(f"| {kind} | {PATH_LABELS[path]} | "
                         + " | ".join(cells) + " |")
    lines.append("")


# -- time with N -----------------------------------------------------------------------------
def part_time(max_n: int, budget: float, repeat: int, lines: list[str]) -> None:
    print(f"\n== trntk time with N (MLP, in memory, best of {repeat}; budget {budget:.0f} s per size)")
    lines += ["### trntk time with N", "", "MLP 784-100³-10, `kernels.compute(..., kind='trntk')` in memory, "
              f"best of {repeat}.", "",
              "| N | time | kernel entries/s | measured or extrapolated | load |", "| ---: | ---: | ---: | --- | --- |"]
    model = mlp()
    kernels.compute(model, inputs(64), kind="trntk")
    n, last = 1000, None
    while n <= max_n:
        predicted = None if last is None else last[1] * (n / last[0]) ** 2
        if predicted is not None and predicted * repeat > budget:
            t, how = predicted, f"extrapolated (N² from N = {last[0]})"
        else:
            x = inputs(n)
            t = min(_timed(lambda: kernels.compute(model, x, kind="trntk")) for _ in range(repeat if n <= 4000 else 1))
            how = "measured" + ("" if n <= 4000 else " (1 run)")
            last = (n, t)
        print(f"[{load()}] N={n:6d}: {t:8.2f} s, {n * n / t / 1e6:8.1f} M entries/s, {how}", flush=True)
        lines.append(f"| {n} | {t:.2f} s | {n * n / t / 1e6:.1f} M | {how} | {load()} |")
        n *= 2
    lines.append("")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- kGLM ------------------------------------------------------------------------------------
def clusters(n: int, classes: int = 10, seed: int = 2) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, 784, generator=g)
    y = torch.arange(n) % classes
    return means[y] + 1.5 * torch.randn(n, 784, generator=g), y.numpy()


def part_kglm(ns: list[int], repeat: int, lines: list[str]) -> None:
    from ntkbench.surrogate import KernelGLM

    print("\n== kGLM fit time per solver (trntk of Gaussian class clusters, 10 classes)")
    lines += ["### kGLM fit time per solver", "",
              "`KernelGLM(solver=...).fit(K, y)` on the trntk kernel (MLP) of 10 Gaussian class clusters; "
              f"sgd with the library defaults (300 epochs, tail averaging), lbfgs to its gradient tolerance; best of {repeat}.",
              "", "| N | sgd | lbfgs | train accuracy sgd / lbfgs | load |", "| ---: | ---: | ---: | --- | --- |"]
    model = mlp()
    for n in ns:
        x, y = clusters(n)
        K = kernels.compute(model, x, kind="trntk").double().numpy()
        times, accs = {}, {}
        for solver in ("sgd", "lbfgs"):
            best = math.inf
            for _ in range(repeat):
                glm = KernelGLM(solver=solver)
                best = min(best, _timed(lambda: glm.fit(K, y)))
            times[solver], accs[solver] = best, float((glm.predict(K) == y).mean())
        print(f"[{load()}] N={n:6d}: sgd {times['sgd']:7.2f} s, lbfgs {times['lbfgs']:7.2f} s "
              f"(train acc {accs['sgd']:.3f} / {accs['lbfgs']:.3f})", flush=True)
        lines.append(f"| {n} | {times['sgd']:.2f} s | {times['lbfgs']:.2f} s | "
                     f"{accs['sgd']:.3f} / {accs['lbfgs']:.3f} | {load()} |")
    lines.append("")


# -- neural-tangents -------------------------------------------------------------------------
def part_nt(n: int, repeat: int, nt_python: str, lines: list[str]) -> None:
    print(f"\n== neural-tangents (JAX, CPU, structured derivatives) vs ntkbench trntk0, MLP, N = {n}")
    model, x = mlp(), inputs(n)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = os.path.join(tmp, "w.npz"), os.path.join(tmp, "k.npy")
        np.savez(npz, x=x.numpy(), **{f"w{i}": m.weight.detach().numpy() for i, m in enumerate(linears)},
                 **{f"b{i}": m.bias.detach().numpy() for i, m in enumerate(linears)})
        threads = resolve_threads("free")
        # Same CPU budget on both sides: XLA's CPU backend takes its threads from these.
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        if threads == 1:  # XLA's CPU backend has no thread-count flag, only this switch
            env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        proc = subprocess.run([nt_python, os.path.join(HERE, "nt_baseline.py"), npz, out, "--repeat", str(repeat + 1)],
                              capture_output=True, text=True, env=env, check=False)
        result = None
        if proc.returncode == 0 and proc.stdout.strip():
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        if result is None or "skipped" in result:
            why = (result or {}).get("skipped") or f"{nt_python} failed: {proc.stderr.strip()[-300:]}"
            print(f"skipped: {why} (pip install -e .[bench-nt], or --nt-python PATH)")
            lines += ["### neural-tangents side by side", "", f"Skipped: {why}.", ""]
            return
        # neural-tangents divides a traced kernel by the traced size (its mean over the C
        # classes); trntk0 is the sum.
        k_nt = torch.from_numpy(np.load(out)) * model[-1].out_features
    kernels.compute(model, x[:64], kind="trntk0")
    t_ours = min(_timed(lambda: kernels.compute(model, x, kind="trntk0")) for _ in range(repeat))
    k_ours = kernels.compute(model, x, kind="trntk0")
    err = ((k_ours - k_nt).norm() / k_nt.norm()).item()
    print(f"[{load()}] ntkbench trntk0 {t_ours:.3f} s | neural-tangents {result['seconds']:.3f} s "
          f"(runs {['%.3f' % r for r in result['runs']]}, jax {result['jax']}, nt {result['nt']}) | rel. diff {err:.1e}")
    lines += ["### neural-tangents side by side", "",
              f"MLP 784-100³-10, N = {n}, unnormalised trace NTK (ntkbench `trntk0`), same weights and inputs; "
              f"neural-tangents {result['nt']} / jax {result['jax']}, structured derivatives, jit "
              "(compilation excluded: best of the runs after the first).", "",
              "| ntkbench | neural-tangents | ratio | rel. difference | load |", "| ---: | ---: | ---: | ---: | --- |",
              f"| {t_ours:.3f} s | {result['seconds']:.3f} s | {result['seconds'] / t_ours:.2f}x | {err:.1e} | {load()} |", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="memory,time,kglm,nt")
    parser.add_argument("--mem-n", default="1000,2000,4000,8000", help="N values of the memory part")
    parser.add_argument("--mem-kinds", default="trntk,pntk,proj-trntk")
    parser.add_argument("--block", type=int, default=500, help="block_size of the streaming path")
    parser.add_argument("--proj-dim", type=int, default=1024, help="K of proj-* kinds in the memory part")
    parser.add_argument("--proj-max-n", type=int, default=4000, help="largest N of proj-* kinds in the memory part")
    parser.add_argument("--max-n", type=int, default=16000)
    parser.add_argument("--time-budget", type=float, default=60.0, help="seconds per N in the time part")
    parser.add_argument("--kglm-n", default="500,1000,2000,4000")
    parser.add_argument("--nt-n", type=int, default=1000)
    parser.add_argument("--nt-python", default=sys.executable, help="interpreter with jax + neural-tangents")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the Markdown tables to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    print(f"ntkbench scaling benchmark, {datetime.date.today()} on {platform.platform()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, {resolve_threads('free')} free now, "
          f"{os.cpu_count()} cores, {load()}")
    lines = [f"<!-- {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
             f"torch {torch.__version__}, {os.cpu_count()} cores -->", ""]
    parts = args.parts.split(",")
    if "memory" in parts:
        part_memory([int(v) for v in args.mem_n.split(",")], args.mem_kinds.split(","), args.block, args.proj_dim,
                    args.proj_max_n, lines)
    if "time" in parts:
        part_time(args.max_n, args.time_budget, args.repeat, lines)
    if "kglm" in parts:
        part_kglm([int(v) for v in args.kglm_n.split(",")], max(1, args.repeat - 1), lines)
    if "nt" in parts:
        part_nt(args.nt_n, args.repeat, args.nt_python, lines)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
