"""What the integrity checks of issue 25 cost, against the work they protect.

  kernel     compute_to_hdf5 (trntk and entk) on the benchmark MLP and CNN with the fletcher32
             filter on every value dataset (what ntkbench writes) and with it off, then the
             full read of its values that a reading stage's check does: interleaved rounds,
             best of --repeat. The overhead is the difference over the unfiltered time.
  checkpoint save_torch / load_torch (content SHA-256) against plain torch.save / torch.load
             on a ResNet18 state dict (11.2 M parameters).

    python benchmarks/checksums.py            # N = 2000 (trntk), 400 (entk)
    python benchmarks/checksums.py --quick
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import h5py
import torch

from ntkbench import kernels, models, store
from ntkbench.integrity import load_torch, save_torch

import kernels as bench  # benchmarks/kernels.py (this script's directory), not ntkbench.kernels


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def read_all(path: Path) -> None:
    """Read every value dataset in full, as a reading stage's check does (checksums verified)."""
    with h5py.File(path, "r") as f:
        for name in store.VALUE_DATASETS:
            if name in f["kernel"]:
                store.read_dataset(f["kernel"][name], ..., path)


MODELS = {"mlp": ("mlp-784-100x3-10", bench.mlp, (784,)), "cnn": ("cnn-16-32-32", bench.cnn, (1, 28, 28))}


def kernel_rows(n_trntk: int, n_entk: int, repeat: int, tmp: Path, names: list[str]) -> list[dict]:
    rows = []
    for name, build, shape in (MODELS[n] for n in names):
        model = build()
        model.eval()
        for kind, n in (("trntk", n_trntk), ("entk", n_entk)):
            x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
            best = {True: [float("inf")] * 2, False: [float("inf")] * 2}
            for _ in range(repeat):
                for filtered in (False, True):  # interleaved: drift hits both alike
                    store.CHECKSUMMED.clear()
                    store.CHECKSUMMED.update({"fletcher32": True} if filtered else {})
                    path = tmp / f"{name}-{kind}-{filtered}.h5"
                    path.unlink(missing_ok=True)
                    t_write = timed(lambda: kernels.compute_to_hdf5(path, model, x, None, kind=kind, block_size=500,
                                                                    progress=False))
                    t_read = timed(lambda: read_all(path))
                    best[filtered] = [min(best[filtered][0], t_write), min(best[filtered][1], t_read)]
            store.CHECKSUMMED.clear()
            store.CHECKSUMMED.update({"fletcher32": True})
            size = (tmp / f"{name}-{kind}-True.h5").stat().st_size
            rows.append({"model": name, "kind": kind, "N": n, "MB": size / 2**20,
                         "write_plain": best[False][0], "write_checked": best[True][0],
                         "read_plain": best[False][1], "read_checked": best[True][1]})
    return rows


def checkpoint_row(repeat: int, tmp: Path) -> dict:
    model = models.build({"name": "resnet18", "input_shape": [3, 32, 32], "num_outputs": 10})
    state = {"spec": {"name": "resnet18"}, "state_dict": {k: v.detach() for k, v in model.state_dict().items()}}
    t = {"save_plain": [], "save_checked": [], "load_plain": [], "load_checked": []}
    for _ in range(repeat):
        t["save_plain"].append(timed(lambda: torch.save(state, tmp / "plain.pt")))
        t["save_checked"].append(timed(lambda: save_torch(tmp / "checked.pt", state)))
        t["load_plain"].append(timed(lambda: torch.load(tmp / "plain.pt", weights_only=True)))
        t["load_checked"].append(timed(lambda: load_torch(tmp / "checked.pt")))
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "MB": (tmp / "checked.pt").stat().st_size / 2**20, **{k: min(v) for k, v in t.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 400 / 100, one round")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n-trntk", type=int, default=2000, help="points of the trntk kernels")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--n-entk", type=int, default=400, help="points of the entk kernels (C x C entries each)")
    args = parser.parse_args()
    n_trntk, n_entk, repeat = (400, 100, 1) if args.quick else (args.n_trntk, args.n_entk, args.repeat)
    print(f"# checksums benchmark, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}\n")
    with tempfile.TemporaryDirectory() as tmp:
        rows = kernel_rows(n_trntk, n_entk, repeat, Path(tmp), args.models.split(","))
        print("| model | kind | N | file MB | kernel job, plain s | with fletcher32 s | overhead | "
              "full read check, plain s | checked s | overhead |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['kind']} | {r['N']} | {r['MB']:.1f} | {r['write_plain']:.2f} | "
                  f"{r['write_checked']:.2f} | {100 * (r['write_checked'] / r['write_plain'] - 1):+.1f}% | "
                  f"{r['read_plain']:.3f} | {r['read_checked']:.3f} | "
                  f"{100 * (r['read_checked'] / r['read_plain'] - 1):+.1f}% |")
        c = checkpoint_row(repeat if not args.quick else 1, Path(tmp))
        print(f"\nResNet18 checkpoint ({c['params'] / 1e6:.1f} M parameters, {c['MB']:.0f} MB): save "
              f"{c['save_plain']:.3f} s plain, {c['save_checked']:.3f} s with SHA-256; load {c['load_plain']:.3f} s "
              f"plain, {c['load_checked']:.3f} s verified")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
