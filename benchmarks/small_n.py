"""Where ntkbench's time goes at small N, beside the tutorial's vmap(jacrev) (issue 24, item 3).

At N = 50 a kernel is a few tens of milliseconds and fixed costs decide the ratio to the peers.
For each member this script times, in one process, in interleaved rounds (best of ``--repeat``):

* ``ntkbench``: ``kernels.compute(kind="trntk0")`` as a user calls it;
* ``no check``: the same with the fast path's one-off cross-check against autograd skipped
  (``GradientEngine._verified`` set beforehand: what the check costs; never a user setting);
* ``reps`` / ``contraction``: the gradient representations of the N samples and their Gram
  matrix, apart (after the check);
* ``vmap(jacrev)``: the PyTorch NTK tutorial's Jacobian contraction.

``--isolated`` instead times ntkbench and vmap(jacrev) each in its own fresh process (as
peers.py's workers do), twice each, alternating, and counts the minor page faults of a call:
with glibc's default allocator settings, and with the freed heap kept (trim threshold 1 GiB,
mmap threshold 32 MiB, its largest). Fresh pages from the kernel are a large part of both
methods' time at this N, and how many a call takes depends on what else the process did
(glibc's mmap and trim thresholds adapt to the allocations it has seen), so the methods are
compared in processes of their own.

    python benchmarks/small_n.py --members cnn-bn-pool-8-16,cnn-narrow-8-16-strided,attention-emb-ln
    python benchmarks/small_n.py --isolated --members all
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels import FAMILY, family_member, func_jacobians  # noqa: E402 - this directory's

from ntkbench import kernels  # noqa: E402
from ntkbench.kernels import engine  # noqa: E402


def jacrev_trntk0(model, x):
    return torch.stack([torch.einsum("Naf,Maf->NM", j, j) for j in func_jacobians(model, x)]).sum(0)


def parts(model, x) -> dict:
    """Callables timing the pieces of one ntkbench call (after the source's cross-check)."""
    opts = engine.KernelOptions(kind="trntk0")
    cpu = torch.device("cpu")

    def unchecked():
        source = engine.make_source(model, opts, cpu, x[:1])
        source._verified = True
        return engine.symmetric_kernel([source.reps(x)], False, False, x.shape[0])

    checked = engine.make_source(model, opts, cpu, x[:1])
    reps = checked.reps(x)  # the check happens here, once
    return {
        "ntkbench": lambda: kernels.compute(model, x, kind="trntk0"),
        "no check": unchecked,
        "reps": lambda: checked.reps(x),
        "contraction": lambda: engine.symmetric_kernel([reps], False, False, x.shape[0]),
        "vmap(jacrev)": lambda: jacrev_trntk0(model, x),
    }


HEAP_KEPT = {"MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_MMAP_THRESHOLD_": str(2**25)}
ISOLATED = ("ntkbench", "vmap(jacrev)")


def time_alone(method: str, name: str, n: int, repeat: int, threads: int) -> dict:
    """``method`` alone in this process: best time of ``repeat`` calls after two warm-ups (ms)
    and the median minor page faults of a call."""
    model, x = family_member(name, n)
    fn = {"ntkbench": lambda: kernels.compute(model, x, kind="trntk0", threads=threads),
          "vmap(jacrev)": lambda: jacrev_trntk0(model, x)}[method]
    fn()
    fn()
    best, faults = float("inf"), []
    for _ in range(repeat):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"ms": best * 1e3, "faults": statistics.median(faults)}


def isolated(names: list[str], args) -> None:
    """One table row per member: each method in fresh processes, default heap and heap kept."""
    print("| member | ntkbench (ms) | faults (MB) | vmap(jacrev) (ms) | faults (MB) | jacrev / ntkbench "
          "| heap kept: ntkbench (ms) | vmap(jacrev) (ms) | jacrev / ntkbench | load |")
    print("| --- |" + " ---: |" * 9)
    for name in names:
        cells = {}
        for label, extra in (("default", {}), ("kept", HEAP_KEPT)):
            for _ in range(2):
                for method in ISOLATED:
                    out = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--one", method, "--members", name,
                         "--n", str(args.n), "--repeat", str(args.repeat), "--threads", str(args.threads)],
                        env={**os.environ, **extra}, check=True, capture_output=True, text=True).stdout
                    got = json.loads(out.strip().splitlines()[-1])
                    prev = cells.get((label, method))
                    if prev is None or got["ms"] < prev["ms"]:
                        cells[label, method] = got
        mb = lambda c: c["faults"] * resource.getpagesize() / 2**20  # noqa: E731
        d_ours, d_jac = cells["default", "ntkbench"], cells["default", "vmap(jacrev)"]
        k_ours, k_jac = cells["kept", "ntkbench"], cells["kept", "vmap(jacrev)"]
        print(f"| {name} | {d_ours['ms']:.1f} | {mb(d_ours):.1f} | {d_jac['ms']:.1f} | {mb(d_jac):.1f} "
              f"| {d_jac['ms'] / d_ours['ms']:.2f}x | {k_ours['ms']:.1f} | {k_jac['ms']:.1f} "
              f"| {k_jac['ms'] / k_ours['ms']:.2f}x | {os.getloadavg()[0]:.1f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="cnn-tiny-4-8-pool,cnn-narrow-8-16-strided,cnn-bn-pool-8-16,attention-emb-ln")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--env-note", default="default allocator")
    parser.add_argument("--isolated", action="store_true", help="each method in fresh processes, with page faults")
    parser.add_argument("--one", choices=ISOLATED, help=argparse.SUPPRESS)  # a child of --isolated
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = list(FAMILY) if args.members == "all" else args.members.split(",")
    if args.one:
        print(json.dumps(time_alone(args.one, names[0], args.n, args.repeat, args.threads)))
        return 0
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
          f"{args.threads} thread(s), N = {args.n}, best of {args.repeat}"
          + (", each method in its own processes -->" if args.isolated else f", {args.env_note} -->"))
    if args.isolated:
        isolated(names, args)
        return 0
    cols = ["ntkbench", "no check", "reps", "contraction", "vmap(jacrev)"]
    print("| member | " + " | ".join(f"{c} (ms)" for c in cols) + " | check share | jacrev / ntkbench | load |")
    print("| --- |" + " ---: |" * (len(cols) + 3))
    for name in names:
        model, x = family_member(name, args.n)
        fns = parts(model, x)
        ref = fns["ntkbench"]()
        diff = float((fns["vmap(jacrev)"]() - ref).norm() / ref.norm())
        assert diff < 1e-5, f"{name}: vmap(jacrev) differs from ntkbench by {diff:.1e}"
        best = {k: float("inf") for k in fns}
        for _ in range(args.repeat):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t)
        ms = {k: v * 1e3 for k, v in best.items()}
        share = 1 - ms["no check"] / ms["ntkbench"]
        print(f"| {name} | " + " | ".join(f"{ms[c]:.1f}" for c in cols)
              + f" | {share:.0%} | {ms['vmap(jacrev)'] / ms['ntkbench']:.2f}x | {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
