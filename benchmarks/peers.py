"""The kernel engine against its real peers, on every member of the architecture family
(benchmarks/kernels.py FAMILY): exact trntk0 and entk, same weights, same inputs, same threads.

Methods (``--peers``, default all):

  ntkbench    ``kernels.compute(model, x, kind="trntk0" | "entk")``
  nt1/nt2/nt3 neural-tangents 0.6.5 ``empirical_ntk_fn``, NtkImplementation 1 (Jacobian
              contraction), 2 (NTK-vector products), 3 (structured derivatives), jit-compiled
              (compile time reported apart), on benchmarks/family_port.py's port of the member
              to a plain JAX function apply(params, x); runs in the interpreter ``--nt-python``
              (benchmarks/peers_nt.py)
  nngeometry  nngeometry 0.4 ``GramMatrix(model, loader)`` (FMatDense, its TorchHooks Jacobian
              backend; one batch of all N unless ``--nng-batch``: it recomputes the inner
              batches for every outer one, so one batch is its fastest)
  jacrev      the PyTorch ``torch.func`` NTK tutorial, ``empirical_ntk_jacobian_contraction``:
              ``vmap(jacrev)`` Jacobians contracted per parameter with einsum (the Jacobians of
              x computed once and contracted with themselves, not twice as the tutorial's call
              with x1 = x2 would: the cheaper reading for the peer)
  ntvp        the same tutorial's ``empirical_ntk_ntk_vps`` (vjp then jvp per output basis
              vector, vmapped over all pairs); trntk is its full kernel's trace, as there

trntk here is the unnormalised trace NTK sum_c <g^c_i, g^c_j> (ntkbench's ``trntk0``;
neural-tangents' traced kernel is its mean over the C classes and is multiplied by C); entk is
(N, N, C, C).

Rules: every method runs in its own worker process (torch: this script with ``--worker``; JAX:
peers_nt.py), so that one running out of memory is recorded as a failure and the run goes on,
and no method's allocations shape another's allocator state;
a worker whose resident memory passes ``--mem-limit-gb`` is killed, and a method whose memory
lower bound (the (N, C, P) Jacobian it materialises, the (C N)^2 Gram nngeometry stores, the
N^2 C P tangents of ntvp, the kernel itself) passes it is not started ("predicted").
First a float64 pass at ``--check-n`` samples (jax_enable_x64, model.double()) checks every
method's kernel against ntkbench's (relative Frobenius difference, should be <= 1e-5); then the
float32 timing pass: after one warm-up (JAX: jit lower + compile at the full N, timed apart),
``--repeat`` interleaved rounds, each timing every method once, best of the rounds; its float32
difference to ntkbench is reported too. All methods get ``--threads`` T: torch.set_num_threads
(T) and ``threads=T`` for ntkbench; the CPU affinity is restricted to T CPUs when T is fewer
than allowed (XLA's CPU thread pool follows the affinity mask), plus OMP/MKL variables and, for
T = 1, XLA's single-thread flags. The load average is printed beside each row.

The table (``--out``) gives per member and kind: each method's best time, the best peer and
best-peer time / ntkbench time (> 1: ntkbench is faster), NT compile times, the member's
ceiling as benchmarks/kernels.py defines it (vmap(jacrev)'s time over the time ntkbench's
contraction flops would take at the machine's matmul rate, measured at the start), the same
against the best peer, the largest relative differences (float64 check, float32 run), load and
threads.

``--scale``: for mlp-d3-w100, cnn-narrow-8-16-strided and resnet-16-32-64-bn (``--members``),
N in ``--scale-n`` (default 1000,4000,16000,64000), exact trntk0 by ntkbench in memory
(``ntkbench``), ntkbench through ``compute_to_hdf5(..., feature_cache_mb=0)``
(``ntkbench-hdf5``, block ``--block``) and each peer; each (method, N) in a fresh worker, whose
peak resident memory (ru_maxrss) and that after loading model and data are recorded. A method
that fails (killed over ``--mem-limit-gb``, an exception, over ``--time-limit`` seconds, or
predicted to: its memory lower bound over the limit, or its time at the previous N scaled by
N^2 over the limit) is not run at larger N. Writes ``--csv`` and ``--figure`` (time and peak
memory growth against N, log-log, one line per method, a cross where it failed). ``--plot
a.csv,b.csv --figure f.png`` draws one figure from the CSVs of several such runs (one run per
member, each restartable on its own).

Install the peers (benchmarks/README.md, section `peers.py`, says the same):

    python3.11 -m venv /tmp/ntvenv                       # neural-tangents: its own interpreter
    /tmp/ntvenv/bin/pip install neural-tangents==0.6.5 "jax[cpu]==0.4.25" jaxlib==0.4.25 numpy==1.26.4 \\
        ml_dtypes==0.4.1 tf2jax==0.3.6 tensorflow==2.18.1  # the bench-nt pins; neural_tangents imports tensorflow
    .venv/bin/pip install -e ".[bench-peers]"            # nngeometry 0.4 (+ torchvision 0.28.0,
                                                         # the release that keeps torch 2.13.0)

Run:

    python benchmarks/peers.py --nt-python /tmp/ntvenv/bin/python --out benchmarks/runs/peers.md
    python benchmarks/peers.py --nt-python /tmp/ntvenv/bin/python --n 50 --out benchmarks/runs/peers_n50.md
    python benchmarks/peers.py --members mlp-d3-w100 --n 16 --repeat 1 --peers ntkbench,jacrev,ntvp
    python benchmarks/peers.py --scale --nt-python /tmp/ntvenv/bin/python --csv benchmarks/runs/peers_scale.csv \\
        --figure benchmarks/runs/peers_scale.png
    python benchmarks/peers.py --plot runs/scale_mlp.csv,runs/scale_cnn.csv --figure runs/scale.png --time-limit 600
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from peers_nt import maxrss_mb, rss_mb, serve  # noqa: E402 - this directory's; imports no jax
PEERS = ("ntkbench", "nt1", "nt2", "nt3", "nngeometry", "jacrev", "ntvp")
NT_METHODS = ("nt1", "nt2", "nt3")
SCALE_MEMBERS = ("mlp-d3-w100", "cnn-narrow-8-16-strided", "resnet-16-32-64-bn")
LABELS = {"ntkbench": "ntkbench", "ntkbench-hdf5": "ntkbench (HDF5, cache 0)",
          "ntkbench-hdf5-b256": "ntkbench (HDF5, cache 0, block 256)", "nt1": "NT jac. contraction",
          "nt2": "NT NTK-vector products", "nt3": "NT structured", "nngeometry": "nngeometry",
          "jacrev": "vmap(jacrev)", "ntvp": "torch.func NTK-vp"}


def load_avg() -> float:
    return os.getloadavg()[0]


# -- the torch worker (this script with --worker) ---------------------------------------------
class TorchWorker:
    """Runs ntkbench, nngeometry and the torch.func tutorial's methods on one loaded member."""

    def __init__(self, dtype: str, threads: int, block: int, scratch: str, nng_batch: int):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        self.threads, self.block, self.scratch, self.nng_batch = threads, block, scratch, nng_batch
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        if self.dtype == torch.float64:
            # nngeometry allocates its per-layer gradient buffers in the default dtype; without
            # this its float64 Gram carries float32 rounding.
            torch.set_default_dtype(torch.float64)
        sys.path.insert(0, HERE)
        import family_port
        import kernels as bench  # benchmarks/kernels.py

        self.port, self.bench = family_port, bench

    def load(self, npz: str, x: str | None = None) -> dict:
        import numpy as np

        torch = self.torch
        name, _, params, consts, x_npz = self.port.load_npz(npz)
        model, _ = self.bench.family_member(name, 1)
        state = {k: torch.from_numpy(v) for k, v in {**params, **consts}.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        self.model = model.to(self.dtype).eval()
        xs = torch.from_numpy(np.load(x) if x else x_npz)
        self.x = xs.to(self.dtype) if xs.is_floating_point() else xs
        self.C = 10
        return {"name": name, "N": int(self.x.shape[0]), "rss_mb": rss_mb(), "maxrss_mb": maxrss_mb(),
                "torch": torch.__version__}

    # the methods: kernel in ntkbench's layout, (N, N) trntk0 or (N, N, C, C) entk
    def _ntkbench(self, x, kind):
        from ntkbench import kernels
        from ntkbench.kernels.reps import STATS

        STATS.reset()
        k = kernels.compute(self.model, x, kind="trntk0" if kind == "trntk" else "entk", dtype=self.dtype,
                            threads=self.threads)
        self.flops = STATS.flops
        return k

    def _ntkbench_hdf5(self, x, kind):
        import h5py

        from ntkbench.kernels.streaming import compute_to_hdf5

        if kind != "trntk":
            raise ValueError("ntkbench-hdf5 is timed for trntk only")
        tmp = tempfile.mkdtemp(dir=self.scratch)
        try:
            path = os.path.join(tmp, "k.h5")
            compute_to_hdf5(path, self.model, x, kind="trntk0", block_size=self.block, progress=False,
                            feature_cache_mb=0, dtype=self.dtype, threads=self.threads)
            if not self.keep:
                return None
            with h5py.File(path, "r") as fh:
                return self.torch.from_numpy(fh["kernel"]["kernel"][...])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _fnet_single(self):
        from torch.func import functional_call

        model = self.model
        return lambda params, xi: functional_call(model, params, (xi.unsqueeze(0),)).squeeze(0)

    def _jacrev(self, x, kind):
        # The tutorial's empirical_ntk_jacobian_contraction, Jacobians of x computed once.
        torch = self.torch
        jac = self.bench.func_jacobians(self.model, x)  # (N, C, P_param) per parameter
        expr = "Naf,Mbf->NMab" if kind == "entk" else "Naf,Maf->NM"
        return torch.stack([torch.einsum(expr, j, j) for j in jac]).sum(0)

    def _ntvp(self, x, kind):
        # The tutorial's empirical_ntk_ntk_vps, as written.
        torch = self.torch
        from torch.func import jvp, vjp, vmap

        params = {k: v.detach() for k, v in self.model.named_parameters()}
        func = self._fnet_single()

        def get_ntk(x1, x2):
            output, vjp_fn = vjp(lambda p: func(p, x1), params)

            def get_ntk_slice(vec):
                vjps = vjp_fn(vec)
                _, jvps = jvp(lambda p: func(p, x2), (params,), vjps)
                return jvps

            basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device).view(output.numel(), -1)
            return vmap(get_ntk_slice)(basis)

        result = vmap(vmap(get_ntk, (None, 0)), (0, None))(x, x)
        return result if kind == "entk" else torch.einsum("NMKK->NM", result)

    def _nngeometry(self, x, kind):
        from nngeometry import GramMatrix
        from torch.utils.data import DataLoader, TensorDataset

        loader = DataLoader(TensorDataset(x), batch_size=self.nng_batch or x.shape[0])
        G = GramMatrix(self.model, loader).to_torch()  # FMatDense.data: (C, N, C, N)
        return self.torch.einsum("cicj->ij", G) if kind == "trntk" else G.permute(1, 3, 0, 2)

    def _method(self, method):
        return {"ntkbench": self._ntkbench, "ntkbench-hdf5": self._ntkbench_hdf5, "jacrev": self._jacrev,
                "ntvp": self._ntvp, "nngeometry": self._nngeometry}[method]

    def prepare(self, method: str, kind: str) -> dict:
        """Warm-up on a few samples (libraries, allocator, primitive caches)."""
        self.keep = False
        start = time.perf_counter()
        self._method(method)(self.x[: min(8, self.x.shape[0])], kind)
        return {"compile_s": time.perf_counter() - start, "maxrss_mb": maxrss_mb()}

    def run(self, method: str, kind: str, save: str | None = None) -> dict:
        import numpy as np

        self.keep, self.flops = bool(save), math.nan
        start = time.perf_counter()
        k = self._method(method)(self.x, kind)
        seconds = time.perf_counter() - start
        if save:
            np.save(save, k.detach().cpu().numpy())
        del k
        return {"seconds": seconds, "maxrss_mb": maxrss_mb(), "flops": self.flops}


def worker_main(args) -> int:
    return serve(lambda: TorchWorker(args.dtype, args.threads, args.block, args.scratch or tempfile.gettempdir(),
                                     args.nng_batch))


# -- the parent: worker processes, memory cap, time limits -----------------------------------
class PeerFailed(Exception):
    """A method failed: an exception in the worker, its death, the memory cap or a time limit."""


class WorkerProc:
    """One worker process speaking JSON lines; killed when its RSS passes ``mem_limit_mb``."""

    def __init__(self, argv: list[str], mem_limit_mb: float, log_path: str, env: dict | None = None,
                 start_timeout: float = 600.0):
        self.log_path = log_path
        self.mem_limit_mb = mem_limit_mb
        self.killed: str | None = None
        self.peak_mb = 0.0
        with open(log_path, "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                         env=env)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()
        self.hello = self._read(start_timeout)

    def _poll(self) -> None:
        path = f"/proc/{self.proc.pid}/status"
        while not self._stop.is_set() and self.proc.poll() is None:
            try:
                with open(path) as fh:
                    fields = dict(line.split(":", 1) for line in fh if line.startswith(("VmRSS", "VmHWM")))
                rss = int(fields["VmRSS"].split()[0]) / 1024
                self.peak_mb = max(self.peak_mb, rss, int(fields["VmHWM"].split()[0]) / 1024)
            except (OSError, KeyError, ValueError):
                break
            if rss > self.mem_limit_mb:
                self.killed = f"killed at {rss / 1024:.1f} GB resident > --mem-limit-gb {self.mem_limit_mb / 1024:g}"
                self.proc.kill()
                break
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _stderr_tail(self, n: int = 400) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                lines = [ln.strip() for ln in fh if ln.strip() and not ln.startswith(("W0000", "I0000"))]
        except OSError:
            return ""
        return " | ".join(lines[-3:])[-n:]

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, timeout))
        if not ready:
            self.proc.kill()
            self.proc.wait()
            raise PeerFailed(f"over the time limit ({timeout:.0f} s)")
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self._stop.set()
            why = self.killed or (f"worker died (exit {rc}" + (", SIGKILL: out of memory?" if rc == -9 else "")
                                  + f"): {self._stderr_tail()}")
            raise PeerFailed(why)
        answer = json.loads(line)
        if "error" in answer:
            raise PeerFailed(answer["error"])
        return answer

    def request(self, timeout: float, **req) -> dict:
        if not self.alive():
            raise PeerFailed(self.killed or "worker not running")
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self._read(timeout)

    def close(self) -> None:
        self._stop.set()
        if self.alive():
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@dataclass
class Env:
    """What every worker gets: interpreters, threads, limits, scratch space."""

    nt_python: str | None
    threads: int
    dtype: str
    mem_limit_mb: float
    time_limit: float
    tmp: str
    block: int
    nng_batch: int
    env: dict = field(default_factory=dict)

    def start(self, side: str) -> WorkerProc:
        if side == "jax":
            if not self.nt_python:
                raise PeerFailed("no --nt-python interpreter with neural-tangents given")
            argv = [self.nt_python, os.path.join(HERE, "peers_nt.py"), "--dtype", self.dtype]
        else:
            argv = [sys.executable, os.path.abspath(__file__), "--worker", "--dtype", self.dtype,
                    "--threads", str(self.threads), "--block", str(self.block), "--scratch", self.tmp,
                    "--nng-batch", str(self.nng_batch)]
        log = tempfile.mktemp(prefix=f"{side}-", suffix=".log", dir=self.tmp)
        return WorkerProc(argv, self.mem_limit_mb, log, env=self.env, start_timeout=self.time_limit)


def side_of(method: str) -> str:
    return "jax" if method in NT_METHODS else "torch"


def apply_threads(threads: int) -> dict:
    """Restrict this process (and so its workers) to ``threads`` CPUs; the workers' environment."""
    import torch

    allowed = sorted(os.sched_getaffinity(0))
    if threads < len(allowed):
        os.sched_setaffinity(0, allowed[:threads])
    torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if threads == 1:
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    return env


# -- what each method must at least hold ------------------------------------------------------
def memory_floor(method: str, kind: str, N: int, C: int, P: int, act: int, itemsize: int) -> tuple[float, str]:
    """(bytes, what) that ``method`` necessarily materialises at N: a lower bound."""
    out = N * N * (C * C if kind == "entk" else 1) * itemsize
    if method in ("jacrev", "nt1"):
        return max(out, N * C * P * itemsize), "the (N, C, P) Jacobian"
    if method == "nngeometry":
        return C * C * N * N * itemsize, "the (C, N, C, N) Gram"
    if method == "ntvp":
        # The vjps (C P per sample) enter jvp under the two vmaps and are broadcast to every
        # pair: N^2 C P (measured: 5.1 GB peak for mlp-d1-w512 at N = 12, float64).
        return N * N * C * max(P, act) * itemsize, "the N^2 C P tangents of its jvp"
    if method == "ntkbench-hdf5":
        return 0.0, ""
    return out, "the kernel"


def widest_activation(model, x1) -> int:
    """Largest per-sample output of any leaf module (elements), from one forward pass."""
    import torch

    sizes = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel() if torch.is_tensor(o) else 0))
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(x1)
    for h in hooks:
        h.remove()
    return max(sizes)


# -- one member, one N: every method, interleaved rounds ------------------------------------
@dataclass
class Result:
    times: list = field(default_factory=list)
    compile_s: float = math.nan
    error: str | None = None
    diff: float = math.nan
    flops: float = math.nan

    @property
    def best(self) -> float:
        return min(self.times) if self.times else math.nan


class Pools:
    """The table mode's workers, one per method, kept across members and restarted after a
    death. Each method's allocator state (what glibc keeps of freed memory, its adaptive mmap
    and trim thresholds) is then shaped by that method's own work only: sharing one process,
    the fresh-page faults that dominate at N = 50 depended on which method had run before."""

    def __init__(self, env: Env):
        self.env, self.procs, self.gen, self.loaded = env, {}, {}, {}

    def get(self, method: str, npz: str) -> WorkerProc:
        proc = self.procs.get(method)
        if proc is None or not proc.alive():
            if proc is not None:
                proc.close()
            self.procs[method] = proc = self.env.start(side_of(method))
            self.gen[method] = self.gen.get(method, 0) + 1
            self.loaded.pop(method, None)
        if self.loaded.get(method) != npz:
            proc.request(self.env.time_limit, cmd="load", npz=npz, x=None)
            self.loaded[method] = npz
        return proc

    def close(self) -> None:
        for proc in self.procs.values():
            proc.close()
        self.procs.clear()


def measure(pools: Pools, name: str, N: int, kinds: list[str], methods: list[str], repeat: int, dtype: str,
            tmp: str) -> tuple[dict, dict]:
    """{(kind, method): Result} for member ``name`` at N, and facts about the member."""
    import family_port as port
    import kernels as bench
    import numpy as np
    import torch

    model, x = bench.family_member(name, N)
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    model = model.to(tdtype)
    if x.is_floating_point():
        x = x.to(tdtype)
    P = sum(p.numel() for p in model.parameters())
    C = 10
    info = {"P": P, "N": N, "C": C}
    npz = os.path.join(tmp, f"{name}-{N}-{dtype}.npz")
    port_error = None
    try:
        spec, params, consts = port.export(model)
        port.save_npz(npz, name, spec, params, consts, x)
    except NotImplementedError as err:  # only the JAX side needs the port
        port_error = f"port: {err}"
        spec, params, consts = None, dict(model.named_parameters()), {k: v for k, v in model.named_buffers()}
        port.save_npz(npz, name, {"op": "seq", "layers": []}, params, consts, x)
    act = widest_activation(model, x[:1])
    itemsize = torch.finfo(tdtype).bits // 8
    results: dict = {}
    for kind in kinds:
        res = {m: Result() for m in methods}
        gens: dict = {}
        for m in methods:
            need, what = memory_floor(m, kind, N, C, P, act, itemsize)
            if m in NT_METHODS and port_error:
                res[m].error = port_error
            elif need > pools.env.mem_limit_mb * 2**20:
                res[m].error = f"predicted out of memory: {what} alone needs {need / 2**30:.1f} GB"
        for r in range(repeat):
            for m in methods:
                if res[m].error:
                    continue
                try:
                    proc = pools.get(m, npz)
                    if gens.get(m) != pools.gen[m]:  # first round, or the worker was restarted
                        ans = proc.request(pools.env.time_limit, cmd="prepare", method=m, kind=kind)
                        if math.isnan(res[m].compile_s):
                            res[m].compile_s = ans["compile_s"]
                        gens[m] = pools.gen[m]
                    save = os.path.join(tmp, f"k-{m}.npy") if r == 0 else None
                    ans = proc.request(pools.env.time_limit, cmd="run", method=m, kind=kind, save=save)
                    res[m].times.append(ans["seconds"])
                    if m == "ntkbench":
                        res[m].flops = ans.get("flops", math.nan)
                except PeerFailed as err:
                    res[m].error = str(err)
        ref_path = os.path.join(tmp, "k-ntkbench.npy")
        ref = np.load(ref_path).astype(np.float64) if not res.get("ntkbench", Result(error="-")).error else None
        for m in methods:
            path = os.path.join(tmp, f"k-{m}.npy")
            if ref is not None and m != "ntkbench" and not res[m].error and os.path.exists(path):
                k = np.load(path).astype(np.float64)
                res[m].diff = (float(np.linalg.norm(k - ref) / np.linalg.norm(ref)) if k.shape == ref.shape
                               else math.inf)
            if os.path.exists(path):
                os.remove(path)
            results[kind, m] = res[m]
    os.remove(npz)
    return results, info


# -- the table mode -------------------------------------------------------------------------
def fmt_t(t: float) -> str:
    if math.isnan(t):
        return "–"
    return f"{t:.3f} s" if t < 10 else f"{t:.1f} s"


def run_table(args, env: Env) -> None:
    import kernels as bench

    members = list(bench.FAMILY) if args.members == "all" else args.members.split(",")
    methods = [m for m in args.peers.split(",")]
    if "ntkbench" not in methods:
        methods.insert(0, "ntkbench")
    kinds = [{"trntk0": "trntk"}.get(k, k) for k in args.kinds.split(",")]
    gflops = bench.matmul_gflops()
    print(f"machine matmul: {gflops:.1f} GFLOP/s (float32 2048^3, {env.threads} threads)", flush=True)
    checks: dict = {}
    if args.check_n > 0:
        print(f"\n== float64 check pass, N = {args.check_n} (relative Frobenius difference to ntkbench)", flush=True)
        env64 = Env(**{**env.__dict__, "dtype": "float64"})
        pools = Pools(env64)
        try:
            for name in members:
                res, _ = measure(pools, name, args.check_n, kinds, methods, 1, "float64", env.tmp)
                checks[name] = res
                print(f"[load {load_avg():.1f}] {name:24s} " + " | ".join(
                    f"{k} {m} " + (f"{r.diff:.1e}" if not r.error else f"✗ ({r.error})")
                    for (k, m), r in res.items() if m != "ntkbench"), flush=True)
        finally:
            pools.close()
    rows, notes = [], []
    ns = args.n.split(",")
    pools = Pools(env)
    try:
        for name in members:
            for n_arg in ns:
                N = bench.FAMILY[name][2] if n_arg == "family" else int(n_arg)
                load0 = load_avg()
                res, info = measure(pools, name, N, kinds, methods, args.repeat, "float32", env.tmp)
                load1 = max(load0, load_avg())
                for kind in kinds:
                    rows.append(table_row(name, kind, info, res, methods, checks.get(name, {}), gflops, load1,
                                          env.threads, notes))
                    print(f"[load {load1:.1f}, {env.threads} thr] " + console_row(rows[-1], methods), flush=True)
    finally:
        pools.close()
    text = render_table(rows, methods, notes, args, env, gflops)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


def footnote(notes: list[str], text: str) -> int:
    """The 1-based number of ``text`` among the notes (added if new)."""
    if text not in notes:
        notes.append(text)
    return notes.index(text) + 1


def table_row(name, kind, info, res, methods, check, gflops, load, threads, notes) -> dict:
    ours = res[kind, "ntkbench"]
    peers = {m: res[kind, m] for m in methods if m != "ntkbench"}
    ok = {m: r.best for m, r in peers.items() if not r.error and r.times}
    best = min(ok, key=ok.get) if ok else None
    cells = {}
    for m in methods:
        r = res[kind, m]
        if r.error:
            cells[m] = f"✗ [{footnote(notes, f'{name} {m}: {r.error}')}]"
        else:
            cells[m] = fmt_t(r.best)
    t_contract = ours.flops / (gflops * 1e9) if ours.flops and not math.isnan(ours.flops) else math.nan
    jac = peers.get("jacrev")
    diffs64 = [r.diff for (k, m), r in check.items() if k == kind and m != "ntkbench" and not r.error]
    fails64 = []
    for (k, m), r in check.items():
        if k == kind and r.error:
            fails64.append(f"{m} [{footnote(notes, f'{name} {m}: {r.error}')}]")
    diffs32 = {m: r.diff for m, r in peers.items() if not r.error and not math.isnan(r.diff)}
    worst32 = max(diffs32, key=diffs32.get) if diffs32 else None
    return {"member": name, "kind": kind, "P": info["P"], "N": info["N"], "cells": cells, "ours": ours.best,
            "best": best, "ratio": (ok[best] / ours.best) if best and ours.times else math.nan,
            "compile": {m: res[kind, m].compile_s for m in NT_METHODS if m in methods},
            "ceiling_jac": (jac.best / t_contract) if jac and not jac.error and jac.times else math.nan,
            "ceiling_best": (ok[best] / t_contract) if best else math.nan,
            "diff64": max(diffs64) if diffs64 else math.nan, "fails64": fails64,
            "diff32": diffs32[worst32] if worst32 else math.nan, "worst32": worst32, "load": load, "threads": threads}


def console_row(row: dict, methods: list[str]) -> str:
    cells = " | ".join(f"{m} {row['cells'][m]}" for m in methods)
    return (f"{row['member']:24s} {row['kind']:5s} N={row['N']:5d} {cells} | best peer {row['best']} "
            f"ratio {row['ratio']:.2f}x | rel. diff f64 {row['diff64']:.1e} f32 {row['diff32']:.1e} ({row['worst32']})")


def render_table(rows, methods, notes, args, env, gflops) -> str:
    head = (["member", "kind", "P", "N"] + [LABELS[m] for m in methods]
            + ["best peer", "best peer / ntkbench", "NT compile (1/2/3)", "ceiling (jacrev)", "ceiling (best peer)",
               "max rel. diff f64", "max rel. diff f32", "load", "threads"])
    stamp = (f"<!-- {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, matmul {gflops:.0f} GFLOP/s, "
             f"command: {' '.join(sys.argv)} -->")
    lines = [stamp, "",
             "| " + " | ".join(head) + " |", "| --- | --- | " + " | ".join("---:" for _ in head[2:]) + " |"]
    for r in rows:
        vals = list(r["compile"].values())
        comp = ("/".join("–" if math.isnan(v) else f"{v:.1f}" for v in vals) + " s"
                if any(not math.isnan(v) for v in vals) else "–")
        f64 = ("–" if math.isnan(r["diff64"]) else f"{r['diff64']:.1e}") + (
            f" (✗ {', '.join(r['fails64'])})" if r["fails64"] else "")
        lines.append("| " + " | ".join(
            [r["member"], r["kind"], f"{r['P']:,}", str(r["N"])] + [r["cells"][m] for m in methods]
            + [LABELS.get(r["best"], "–") if r["best"] else "–",
               "–" if math.isnan(r["ratio"]) else f"**{r['ratio']:.2f}x**", comp,
               "–" if math.isnan(r["ceiling_jac"]) else f"{r['ceiling_jac']:.1f}x",
               "–" if math.isnan(r["ceiling_best"]) else f"{r['ceiling_best']:.1f}x",
               f64, "–" if math.isnan(r["diff32"]) else f"{r['diff32']:.1e} ({LABELS[r['worst32']]})",
               f"{r['load']:.1f}", str(r["threads"])])
            + " |")
    lines += ["", (f"Best of {args.repeat} interleaved rounds after one warm-up per method; compile (jit lower + "
              "compile at the full N) apart. best peer / ntkbench > 1: ntkbench is faster. ceiling: the peer's time "
              "over the time ntkbench's contraction flops would take at the machine's matmul rate (the most an engine "
              "computing these exact products could gain). Differences: relative Frobenius norm against ntkbench, "
              f"float64 at N = {args.check_n} (peers failing there are named in the notes) and float32 at the row's N "
              "(the peer with the largest in brackets). Float32 rounding: ntkbench's trntk0 was within 2e-7 of its "
              "float64 value on the family at N = 8; vmap(jacrev)'s float32 einsum over the C P entries lost more "
              "there (2e-4 on mlp-d1-w512, 1e-4 on cnn-wide-64-128), so a large f32 difference names the peer.")]
    if notes:
        lines += ["", "Failures:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


# -- the scale mode ---------------------------------------------------------------------------
def run_scale(args, env: Env) -> None:
    import family_port as port
    import kernels as bench
    import numpy as np

    members = list(SCALE_MEMBERS) if args.members == "all" else args.members.split(",")
    methods = [m for m in args.peers.split(",")]
    if "ntkbench" in methods and "ntkbench-hdf5" not in methods:
        methods.insert(methods.index("ntkbench") + 1, "ntkbench-hdf5")
    ns = [int(v) for v in args.scale_n.split(",")]
    rows: list[dict] = []
    for name in members:
        model, _ = bench.family_member(name, 1)
        P, C = sum(p.numel() for p in model.parameters()), 10
        spec, params, consts = port.export(model)
        npz = os.path.join(env.tmp, f"{name}.npz")
        port.save_npz(npz, name, spec, params, consts)
        act = widest_activation(model, bench.family_member(name, 1)[1])
        stopped: dict[str, str] = {}
        last: dict[str, tuple[int, float]] = {}
        for N in ns:
            xpath = os.path.join(env.tmp, f"x-{name}.npy")
            np.save(xpath, bench.family_member(name, N)[1].numpy())
            for m in methods:
                row = {"member": name, "method": m, "N": N, "P": P, "status": "", "seconds": math.nan,
                       "compile_s": math.nan, "peak_mb": math.nan, "base_mb": math.nan, "growth_mb": math.nan,
                       "load": load_avg(), "threads": env.threads, "message": ""}
                if m in stopped:
                    continue
                need, what = memory_floor(m, "trntk", N, C, P, act, 4)
                if need > env.mem_limit_mb * 2**20:
                    row.update(status="predicted-oom", message=f"{what} alone needs {need / 2**30:.1f} GB")
                elif m in last and last[m][1] * (N / last[m][0]) ** 2 > env.time_limit:
                    pred = last[m][1] * (N / last[m][0]) ** 2
                    row.update(status="predicted-time", message=f"{pred:.0f} s predicted (N^2 from N = {last[m][0]})")
                else:
                    scale_one(env, m, npz, xpath, row)
                if row["status"] != "ok":
                    stopped[m] = row["status"]
                else:
                    last[m] = (N, row["seconds"] + (0 if math.isnan(row["compile_s"]) else row["compile_s"]))
                rows.append(row)
                print(f"[load {row['load']:.1f}, {env.threads} thr] {name:24s} {m:13s} N={N:6d} {row['status']:14s} "
                      f"time {fmt_t(row['seconds'])} compile {fmt_t(row['compile_s'])} peak {row['peak_mb']:.0f} MB "
                      f"(base {row['base_mb']:.0f} MB) {row['message']}", flush=True)
            os.remove(xpath)
        os.remove(npz)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["member"])
            w.writeheader()
            w.writerows(rows)
    if args.figure and rows:
        plot_scale(rows, args.figure, env)


def scale_one(env: Env, method: str, npz: str, xpath: str, row: dict) -> None:
    """Load, prepare (NT: compile) and run ``method`` once in a fresh worker; fill ``row``."""
    deadline = time.perf_counter() + env.time_limit
    proc = None
    t_run = None
    try:
        proc = env.start(side_of(method))
        ans = proc.request(deadline - time.perf_counter(), cmd="load", npz=npz, x=xpath)
        row["base_mb"] = ans.get("rss_mb", math.nan)
        ans = proc.request(deadline - time.perf_counter(), cmd="prepare", method=method, kind="trntk")
        if method in NT_METHODS:
            row["compile_s"] = ans["compile_s"]
        t_run = time.perf_counter()
        ans = proc.request(deadline - time.perf_counter(), cmd="run", method=method, kind="trntk", save=None)
        row.update(status="ok", seconds=ans["seconds"], peak_mb=ans["maxrss_mb"])
    except PeerFailed as err:
        kind = "oom" if ("memory" in str(err) or "resident" in str(err)) else (
            "time" if "time limit" in str(err) else "error")
        row.update(status=f"failed-{kind}", message=str(err),
                   seconds=(time.perf_counter() - t_run) if t_run else math.nan,
                   peak_mb=proc.peak_mb if proc else math.nan)
    finally:
        if proc is not None:
            proc.close()
    row["growth_mb"] = row["peak_mb"] - row["base_mb"]


def plot_scale(rows: list[dict], path: str, env: Env) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ntkbench.plots import log_minor_labels

    members = list(dict.fromkeys(r["member"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = {m: plt.cm.tab10(i) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(len(members), 2, figsize=(11, 3.6 * len(members)), squeeze=False)
    for i, name in enumerate(members):
        for m in methods:
            mine = [r for r in rows if r["member"] == name and r["method"] == m]
            ok = [r for r in mine if r["status"] == "ok"]
            bad = [r for r in mine if r["status"] != "ok"]
            for j, (key, limit) in enumerate((("seconds", env.time_limit), ("growth_mb", env.mem_limit_mb))):
                ax = axes[i][j]
                if ok:
                    ax.plot([r["N"] for r in ok], [r[key] for r in ok], "o-", color=colors[m], label=LABELS.get(m, m))
                for r in bad:  # on the limit line: what it reached before failing is not a result
                    ax.plot([r["N"]], [limit], "x", color=colors[m], markersize=10, mew=2,
                            label=None if ok else LABELS.get(m, m))
        for j, (title, unit) in enumerate((("time", "seconds"), ("peak memory growth", "MB"))):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("N")
            ax.set_ylabel(unit)
            ax.set_title(f"{name}: {title} (exact trntk0)", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.xaxis.set_minor_formatter(log_minor_labels())
            ax.yaxis.set_minor_formatter(log_minor_labels())
        axes[i][0].axhline(env.time_limit, color="grey", ls=":", lw=1)
        axes[i][1].axhline(env.mem_limit_mb, color="grey", ls=":", lw=1)
        axes[i][1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"x on the dotted limit line: failed at that N (out of memory > {env.mem_limit_mb / 1024:g} GB, "
                 f"over {env.time_limit:.0f} s, error, or predicted); {env.threads} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(args) -> int:
    """The scale figure from the CSV files of one or more ``--scale`` runs (a run per member
    keeps each one restartable); limits and threads as those runs recorded them."""
    if not args.figure:
        raise SystemExit("--plot needs --figure")
    rows: list[dict] = []
    for path in args.plot.split(","):
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                for key in ("N", "P", "threads"):
                    r[key] = int(r[key])
                for key in ("seconds", "compile_s", "peak_mb", "base_mb", "growth_mb", "load"):
                    r[key] = float(r[key]) if r[key] not in ("", "nan") else math.nan
                rows.append(r)
    if not rows:
        raise SystemExit(f"no rows in {args.plot}")
    threads = sorted({r["threads"] for r in rows})
    if len(threads) > 1:
        raise SystemExit(f"{args.plot}: runs with different thread counts ({threads}) do not share a figure")
    env = SimpleNamespace(time_limit=args.time_limit, mem_limit_mb=args.mem_limit_gb * 1024, threads=threads[0])
    plot_scale(rows, args.figure, env)
    print(f"wrote {args.figure} ({len(rows)} rows)")
    return 0


# -- main -----------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="all", help="comma-separated FAMILY names (default: all; "
                        "with --scale: " + ",".join(SCALE_MEMBERS) + ")")
    parser.add_argument("--n", default="family", help="comma-separated N values, 'family' = the member's own N "
                        "(e.g. family,50)")
    parser.add_argument("--kinds", default="trntk,entk")
    parser.add_argument("--peers", default=",".join(PEERS), help="methods (ntkbench always runs)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; each method's best is reported")
    parser.add_argument("--threads", type=int, default=None, help="threads for every method (default: the CPUs "
                        "this process may use)")
    parser.add_argument("--check-n", type=int, default=8, help="N of the float64 check pass (0: skip it)")
    parser.add_argument("--nt-python", default=None, help="interpreter with jax + neural-tangents (peers_nt.py)")
    parser.add_argument("--mem-limit-gb", type=float, default=24.0, help="a worker above this resident size is "
                        "killed (out of memory); methods whose lower bound exceeds it are not started")
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds per method run (with --scale: "
                        "per worker: load, compile and run)")
    parser.add_argument("--nng-batch", type=int, default=0, help="nngeometry's loader batch size (0: all N at once)")
    parser.add_argument("--out", default=None, help="the Markdown table")
    parser.add_argument("--scale", action="store_true", help="the scale mode (see above)")
    parser.add_argument("--scale-n", default="1000,4000,16000,64000")
    parser.add_argument("--block", type=int, default=1024, help="compute_to_hdf5's block_size (--scale)")
    parser.add_argument("--csv", default=None, help="--scale: rows as CSV")
    parser.add_argument("--figure", default=None, help="--scale: time and memory against N (PNG/PDF)")
    parser.add_argument("--plot", default=None, help="draw --figure from these --csv files of earlier --scale runs "
                        "(comma-separated: one figure, a row per member) and exit")
    parser.add_argument("--scratch", default=None, help="directory for exchange files and HDF5 kernels "
                        "(default: a temporary directory)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plot:
        return replot(args)
    if args.worker:
        args.threads = args.threads or len(os.sched_getaffinity(0))
        return worker_main(args)
    sys.path.insert(0, HERE)
    import torch

    threads = args.threads or len(os.sched_getaffinity(0))
    wenv = apply_threads(threads)
    tmp = tempfile.mkdtemp(prefix="peers-", dir=args.scratch)
    env = Env(nt_python=args.nt_python, threads=threads, dtype="float32", mem_limit_mb=args.mem_limit_gb * 1024,
              time_limit=args.time_limit, tmp=tmp, block=args.block, nng_batch=args.nng_batch, env=wenv)
    print(f"ntkbench peers benchmark, {datetime.date.today()} on {platform.platform()}, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} threads, "
          f"{os.cpu_count()} cores, load {'/'.join(f'{v:.1f}' for v in os.getloadavg())}, "
          f"NT interpreter {args.nt_python or '(none)'}", flush=True)
    try:
        if args.scale:
            run_scale(args, env)
        else:
            run_table(args, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
