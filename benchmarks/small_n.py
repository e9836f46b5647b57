"""Where ntkbench's time goes at small N, beside the tutorial's vmap(jacrev) (issue 24, item 3).

At N = 50 a kernel is a few tens of milliseconds and fixed costs decide the ratio to the peers.
For each member this script times, in one process, in interleaved rounds (best of ``--repeat``):

* ``ntkbench``: ``kernels.compute(kind="trntk0")`` as a user calls it;
* ``no check``: the same with the fast path's one-off cross-check against autograd skipped
  (``GradientEngine._verified`` set beforehand: what the check costs; never a user setting);
* ``reps`` / ``contraction``: the gradient representations of the N samples and their Gram
  matrix, apart (after the check);
* ``vmap(jacrev)``: the PyTorch NTK tutorial's Jacobian contraction.

Run it twice, with glibc's default allocator settings and with the freed heap kept
(``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_`` large, ``--env-note`` labels the rows):
fresh pages from the kernel (page faults) are a large part of both methods' time at this N,
and more of vmap(jacrev)'s.

    python benchmarks/small_n.py --members cnn-bn-pool-8-16,cnn-narrow-8-16-strided,attention-emb-ln
    MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_MMAP_THRESHOLD_=4294967296 \\
        python benchmarks/small_n.py --env-note "heap kept"
"""
from __future__ import annotations

import argparse
import os
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="cnn-tiny-4-8-pool,cnn-narrow-8-16-strided,cnn-bn-pool-8-16,attention-emb-ln")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--env-note", default="default allocator")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = list(FAMILY) if args.members == "all" else args.members.split(",")
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
          f"{args.threads} thread(s), N = {args.n}, best of {args.repeat}, {args.env_note} -->")
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
