"""The ``peers`` part of benchmarks/projection.py (issue 24, item 4): ntkbench's projected
kernels against TRAK's and dattri's random projections, on the architecture family.

For every family member (benchmarks/kernels.py ``FAMILY``), N samples and K in ``--peer-ks``,
for both kinds (proj-trntk: R g^c for every class c, k0 = sum_c <R g^c(x), R g^c(y)>;
proj-pntk: R sum_c g^c, k0 = <R sum_c g^c(x), R sum_c g^c(y)>; both cosine-normalised, SPEC
section 1), in interleaved rounds (best of ``--repeat``), one thread count for all:

  exact           ``ntkbench.kernels.compute(kind="trntk" | "pntk")``: the reference of the errors
  ntkbench e2e    ``kernels.compute(kind="proj-trntk" | "proj-pntk", proj_dim=K)``: its own
                  gradients (factorised where it can, never the (N, C, P) Jacobian of a Linear),
                  its Philox R (device-independent), tiles cached up to 1 GiB on the CPU
  grads           the gradients each kind projects, materialised in chunks of B samples: for
                  proj-trntk the per-sample per-class Jacobians (B, C, P), ``vmap(jacrev)`` of
                  the PyTorch NTK tutorial (benchmarks/kernels.py ``func_jacobians``); for
                  proj-pntk sum_c g^c (B, P), ``vmap(grad)`` of the sum of the logits (one
                  backward pass per sample). B: the chunk's float32 gradients <= ``--chunk-mb``.
                  Computed once per chunk and round and shared by the three projections below
  ntkbench R      ntkbench's ``BlockProjector`` (the same R as "ntkbench e2e") on those chunks
  traker R        traker 0.3.2's CPU ``BasicProjector`` (normal, seed 0, float32) on them
  dattri R        dattri 0.3.0's ``random_project`` (normal, seed 0, cpu; its CPU BasicProjector)

One projector object per (method, kind, round), reused across the chunks of that round, as each
library would when streaming a data set. A peer's end-to-end time is grads + its projection +
the Gram matrix of the projected features (one GEMM) + the normalisation.

What the peers do with R on a CPU (read from their code): both hold one (P, 100) block of R and
draw it again with ``torch.Generator.normal_`` for every block of 100 outputs on *every*
``project`` call (seeds 0 + 1000 block + 1e5 model/ensemble id, identical in both; traker leaves
out dattri's 1/sqrt(K), which the cosine normalisation removes): R is never held whole (P 400
bytes), and is drawn once per chunk. ntkbench keeps R's tiles across chunks while the whole R
(P K 4 bytes) fits its 1 GiB CPU cache, else redraws it per chunk too; its end-to-end path
needs one chunk only where its gradient representations (factorised for Linear and conv
layers) fit 1 GiB. Because traker's and dattri's R are the same matrix, their kernels agree to
float rounding: the errors in both columns are those of one draw of a torch.randn-based R,
against one draw of ntkbench's Philox R; neither is averaged over seeds.

Errors: max and mean |k_proj - k_exact| over the off-diagonal entries (i < j) of the
normalised kernel (the same measure as the ``error`` part), float64 from float32 kernels.

Install the peers into a separate virtual environment (see attribution_peers.py):

    python -m venv .venv-peers
    .venv-peers/bin/pip install torch==2.13.0       # first, so nothing below replaces it
    .venv-peers/bin/pip install -e ".[peers]"        # ntkbench + dattri 0.3.0, traker 0.3.2, ...
    .venv-peers/bin/python benchmarks/projection.py --parts peers --out benchmarks/runs/proj_peers.md
"""
from __future__ import annotations

import datetime
import importlib.metadata as md
import math
import os
import platform
from collections import defaultdict
from collections.abc import Callable

import kernels as bench  # benchmarks/kernels.py
import torch
from torch.func import functional_call, grad, vmap

from ntkbench import kernels
from ntkbench.kernels import philox
from ntkbench.kernels.forward import trainable_parameters
from ntkbench.kernels.projection import CPU_CACHE_BYTES, BlockProjector
from ntkbench.kernels.reps import DenseGrad
from ntkbench.kernels.threads import resolve_threads, thread_budget

KINDS = ("trntk", "pntk")
PROJECTORS = ("ntkbench", "traker", "dattri")


def peer_versions() -> dict[str, str]:
    out = {}
    for dist in ("traker", "dattri"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def check_peers(projectors: list[str]) -> None:
    missing = [p for p in projectors if p != "ntkbench" and peer_versions()[p] == "not installed"]
    if missing:
        raise SystemExit(
            f"--parts peers: {', '.join(missing)} not installed in this interpreter. Install the peers into a "
            "separate venv: python -m venv .venv-peers; .venv-peers/bin/pip install torch==2.13.0; "
            ".venv-peers/bin/pip install -e '.[peers]'; then run this script with .venv-peers/bin/python "
            "(or leave them out with --peer-projectors ntkbench)")


# ------------------------------------------------------------------------ the projectors
def make_projector(method: str, P: int, K: int, seed: int, first_rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(rows)``: rows (n, P) float32 -> (n, K), with ``method``'s R (one object, reused)."""
    if method == "ntkbench":
        raise AssertionError("ntkbench's projector takes layouts: see ntkbench_projector")
    if method == "traker":
        from trak.projectors import BasicProjector, ProjectionType

        proj = BasicProjector(grad_dim=P, proj_dim=K, seed=seed, proj_type=ProjectionType.normal,
                              device=torch.device("cpu"), dtype=torch.float32)
        return lambda rows: proj.project(rows, model_id=0)
    if method == "dattri":
        from dattri.func.projection import random_project

        # attribution_peers.projector_kwargs (proj_max_batch_size only matters on CUDA)
        fn = random_project(first_rows, first_rows.shape[0], proj_dim=K, proj_max_batch_size=32, proj_seed=seed,
                            proj_type="normal", device="cpu")
        return lambda rows: fn(rows, ensemble_id=0)
    raise ValueError(method)


def ntkbench_projector(layout: list[tuple[str, tuple[int, ...]]], K: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ntkbench's BlockProjector (default 1 GiB tile cache) on materialised (B, C, P) gradients."""
    proj = BlockProjector(K, "gaussian", seed, torch.device("cpu"), torch.float32)
    return lambda g: proj.project(DenseGrad(g, layout))


def normalised_gram(F: torch.Tensor) -> torch.Tensor:
    """Cosine-normalised Gram matrix of the rows of F (N, ...): sum over all but the first axis."""
    F = F.reshape(F.shape[0], -1)
    k = F @ F.T
    d = k.diagonal().clamp_min(0).sqrt()
    k = k / (d[:, None] * d[None, :])
    k.diagonal().fill_(1.0)
    return k


def kernel_error(k: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """(max, mean) |k - exact| over the off-diagonal entries i < j."""
    iu = torch.triu_indices(k.shape[0], k.shape[0], 1)
    err = (k.double() - exact.double())[iu[0], iu[1]].abs()
    return float(err.max()), float(err.mean())


def sum_grads(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients of the sum of the logits, sum_c g^c (b, 1, P): one backward pass
    per sample (what proj-pntk projects), ``vmap(grad)``, parameters in named_parameters order."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def total(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).sum()

    g = vmap(grad(total), (None, 0))(params, x)
    return torch.cat([v.flatten(1) for v in g.values()], dim=1).unsqueeze(1)


def grad_chunks(model: torch.nn.Module, x: torch.Tensor, kind: str, B: int):
    """The gradients ``kind`` projects, in chunks of b <= B samples: the per-class Jacobians
    (b, C, P) by ``vmap(jacrev)`` (benchmarks/kernels.py ``func_jacobians``, the PyTorch NTK
    tutorial's) for trntk, :func:`sum_grads` (b, 1, P) for pntk."""
    for s in range(0, len(x), B):
        xb = x[s:s + B]
        yield torch.cat(bench.func_jacobians(model, xb), dim=2) if kind == "trntk" else sum_grads(model, xb)


def grad_chunks_timed(model, x, kind, B, tm):
    """:func:`grad_chunks`, each chunk's time added to ``tm["grads"]``."""
    it = grad_chunks(model, x, kind, B)
    while True:
        g, t = bench.timed(lambda: next(it, None))
        if g is None:
            return
        tm["grads"] += t
        yield g


# ------------------------------------------------------------------------ one member
def run_member(name: str, n: int | None, ks: list[int], repeat: int, threads: int, chunk_mb: int, seed: int,
               projectors: list[str], log=print) -> list[dict]:
    model, x = bench.family_member(name, n)
    N = len(x)
    params = trainable_parameters(model)
    if list(params) != [k for k, _ in model.named_parameters()]:
        raise ValueError(f"{name}: frozen parameters; the Jacobian layout would differ from ntkbench's")
    layout = [(k, tuple(p.shape)) for k, p in params.items()]
    P = sum(p.numel() for p in params.values())
    with torch.no_grad():
        C = model(x[:2]).shape[1]
    # Samples per projector call: the (B, C, P) Jacobians (proj-trntk) or the (B, P) class sums
    # (proj-pntk) within --chunk-mb.
    chunk = {kind: max(1, min(N, (chunk_mb << 20) // (4 * P * (C if kind == "trntk" else 1)))) for kind in KINDS}
    peers = [p for p in projectors if p != "ntkbench"]
    rows = []
    # Warm-up (tracing, allocator, oneDNN primitives) at a small K: every code path, no big R.
    kernels.compute(model, x[:8], kind="trntk", threads=threads)
    kernels.compute(model, x[:8], kind="proj-trntk", proj_dim=256, threads=threads)
    with thread_budget(threads):
        for kind in KINDS:
            g = next(grad_chunks(model, x[:8], kind, 8)).reshape(-1, P)
            for method in peers:
                make_projector(method, P, 256, seed, g)(g)
    del g
    exact, t_exact = {}, defaultdict(lambda: math.inf)
    for K in ks:
        best: dict[tuple[str, str], float] = defaultdict(lambda: math.inf)
        kern: dict[tuple[str, str], torch.Tensor] = {}
        load = os.getloadavg()[0]
        for r in range(repeat):
            for kind in KINDS:
                if K == ks[0]:  # exact kernels: timed in the rounds of the first K only
                    exact[kind], t = bench.timed(lambda: kernels.compute(model, x, kind=kind, threads=threads))
                    t_exact[kind] = min(t_exact[kind], t)
                kern["e2e", kind], t = bench.timed(lambda: kernels.compute(model, x, kind=f"proj-{kind}", proj_dim=K,
                                                                        seed=seed, threads=threads))
                best["e2e", kind] = min(best["e2e", kind], t)
            with thread_budget(threads):
                for kind in KINDS:
                    tm: dict[str, float] = defaultdict(float)
                    feats: dict[str, list[torch.Tensor]] = defaultdict(list)
                    proj_fns: dict[str, Callable] = {}
                    for a in grad_chunks_timed(model, x, kind, chunk[kind], tm):  # (b, C or 1, P)
                        rows_ = a.reshape(-1, P)
                        for method in projectors:
                            if method not in proj_fns:  # construction (first block of R) is timed
                                proj_fns[method], t = bench.timed(
                                    lambda: ntkbench_projector(layout, K, seed) if method == "ntkbench"
                                    else make_projector(method, P, K, seed, rows_))
                                tm[method] += t
                            if method == "ntkbench":
                                f, t = bench.timed(lambda: proj_fns[method](a))
                            else:
                                f, t = bench.timed(lambda: proj_fns[method](rows_).view(a.shape[0], a.shape[1], K))
                            tm[method] += t
                            feats[method].append(f)
                    best["grads", kind] = min(best["grads", kind], tm["grads"])
                    for method in projectors:
                        kern[method, kind], t = bench.timed(lambda: normalised_gram(torch.cat(feats.pop(method))))
                        best["proj", method, kind] = min(best["proj", method, kind], tm[method])
                        best["total", method, kind] = min(best["total", method, kind], tm["grads"] + tm[method] + t)
            load = max(load, os.getloadavg()[0])
        for kind in KINDS:
            row = dict(member=name, P=P, N=N, C=C, K=K, kind=kind, B=chunk[kind],
                       chunks=math.ceil(N / chunk[kind]), load=load, threads=threads,
                       exact=t_exact[kind], e2e=best["e2e", kind], grads=best["grads", kind],
                       R_bytes=4 * P * K, err={}, proj={}, total={}, checks={})
            row["err"]["e2e"] = kernel_error(kern["e2e", kind], exact[kind])
            for method in projectors:
                row["proj"][method] = best["proj", method, kind]
                row["total"][method] = best["total", method, kind]
                row["err"][method] = kernel_error(kern[method, kind], exact[kind])
            if "ntkbench" in projectors:  # the same R on the same gradients: equal to rounding
                row["checks"]["ntkbench R on vmap(jacrev) grads vs ntkbench e2e"] = float(
                    (kern["ntkbench", kind] - kern["e2e", kind]).abs().max())
            if "traker" in projectors and "dattri" in projectors:  # the same R (up to 1/sqrt(K))
                row["checks"]["traker vs dattri"] = float((kern["traker", kind] - kern["dattri", kind]).abs().max())
            rows.append(row)
            log(format_log(row))
    return rows


# ------------------------------------------------------------------------ output
def _ms(seconds: float, n: int) -> str:
    v = seconds / n * 1e3
    return f"{v:.3g}" if v < 1000 else f"{v:.0f}"


def _bytes(b: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b} B"


def _err(e: tuple[float, float]) -> str:
    return f"{e[0]:.2g} / {e[1]:.2g}"


def format_log(row: dict) -> str:
    parts = [f"[load {row['load']:.1f}, {row['threads']} thr] {row['member']:24s} P={row['P']:>8,} N={row['N']} "
             f"K={row['K']} proj-{row['kind']}: exact {row['exact']:.2f} s, ntkbench e2e {row['e2e']:.2f} s "
             f"(err {_err(row['err']['e2e'])}), grads {row['grads']:.2f} s in {row['chunks']} chunk(s)"]
    for m in row["proj"]:
        parts.append(f"{m} R {row['proj'][m]:.2f} s (total {row['total'][m]:.2f} s, err {_err(row['err'][m])})")
    parts += [f"{k}: max diff {v:.1e}" for k, v in row["checks"].items()]
    return " | ".join(parts)


def render(rows: list[dict], projectors: list[str], header: str) -> str:
    peers = [p for p in projectors if p != "ntkbench"]
    cols = ["member", "P", "N", "K", "kind", "R (fp32)", "chunks", "exact", "ntkbench e2e", "grads (shared)"]
    cols += [f"{m} R" for m in projectors]
    cols += [f"{m} e2e ÷ ntkbench e2e" for m in peers]
    if "ntkbench" in projectors:
        cols += [f"{m} R ÷ ntkbench R" for m in peers]
    cols += ["err ntkbench"] + [f"err {m}" for m in peers] + ["load"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        n = r["N"]
        cache = "" if r["R_bytes"] <= CPU_CACHE_BYTES else " †"
        cells = [r["member"], f"{r['P']:,}", str(n), str(r["K"]), f"proj-{r['kind']}", _bytes(r["R_bytes"]) + cache,
                 f"{r['chunks']} × {r['B']}", _ms(r["exact"], n), _ms(r["e2e"], n), _ms(r["grads"], n)]
        cells += [_ms(r["proj"][m], n) for m in projectors]
        cells += [f"{r['total'][m] / r['e2e']:.2f}" for m in peers]
        if "ntkbench" in projectors:
            cells += [f"{r['proj'][m] / r['proj']['ntkbench']:.2f}" for m in peers]
        cells += [_err(r["err"]["e2e"])] + [_err(r["err"][m]) for m in peers] + [f"{r['load']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    checks = defaultdict(float)
    for r in rows:
        for k, v in r["checks"].items():
            checks[k] = max(checks[k], v)
    lines += [
        "",
        "Times in ms per sample (time / N), best of the rounds. *exact*: exact trntk / pntk; *ntkbench e2e*: "
        "`kernels.compute(kind=\"proj-…\")`; *grads*: the gradients projected, materialised by torch.func "
        "(proj-trntk: per-class Jacobians, vmap(jacrev); proj-pntk: vmap(grad) of the sum of the logits), "
        "shared by the R columns; *X R*: projecting those gradients "
        "with X's projector (construction included), chunk by chunk; *X e2e* = grads + X R + Gram matrix. "
        "Ratios > 1: ntkbench faster. *chunks*: projector calls × samples per call (the chunk's gradients ≤ --chunk-mb). "
        "*err*: max / mean |k − k_exact| over the off-diagonal entries of the normalised kernel, one draw of "
        "each R (seed 0), not averaged over seeds.",
        "",
        "R memory: † marks an R (P·K·4 bytes) larger than ntkbench's 1 GiB CPU tile cache: ntkbench then "
        "redraws its tiles for every chunk of samples. traker's and dattri's CPU BasicProjector hold one "
        "(P, 100) block (P·400 bytes) and redraw all of R on every project() call, i.e. per chunk, "
        "whatever its size.",
        "",
        "Checks (largest over the rows): " + "; ".join(f"{k}: max abs diff {v:.1e}" for k, v in checks.items()),
    ]
    return "\n".join(lines) + "\n"


def part_peers(members: list[str], n: int | None, ks: list[int], repeat: int, threads: int | str, chunk_mb: int,
               seed: int, projectors: list[str], out: str | None) -> str:
    check_peers(projectors)
    unknown = [m for m in members if m not in bench.FAMILY]
    if unknown:
        raise SystemExit(f"unknown family member(s) {unknown}; valid: {', '.join(bench.FAMILY)}")
    T = resolve_threads(threads)  # once, so that every method runs with the same count
    versions = peer_versions()
    header = (f"## Projected kernels against the peers' projectors ({datetime.datetime.now():%Y-%m-%d %H:%M}, "
              f"{platform.machine()}, {os.cpu_count()} cores, {T} threads for all, torch {torch.__version__}, "
              f"traker {versions['traker']}, dattri {versions['dattri']}, generator {philox.GENERATOR}, "
              f"load {os.getloadavg()[0]:.1f} at start)")
    print("\n" + header + "\n", flush=True)
    rows = []
    for name in members:
        rows += run_member(name, n, ks, repeat, T, chunk_mb, seed, projectors,
                           log=lambda s: print(s, flush=True))
    text = render(rows, projectors, header)
    print("\n" + text)
    if out:
        with open(out, "w") as fh:
            fh.write(text)
    return text
