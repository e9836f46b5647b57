"""neural-tangents' side of benchmarks/peers.py: a worker that runs in the JAX interpreter.

Needs numpy, jax and neural-tangents only (no torch): ``peers.py --nt-python PATH`` starts it
as ``PATH benchmarks/peers_nt.py --dtype float32`` and talks to it in JSON lines on
stdin/stdout (one request, one answer). The model is benchmarks/family_port.py's port of a
family member, run on :class:`family_port.JaxOps` with the weights from the exchange .npz, as a
plain function ``apply(params, x)`` given to ``neural_tangents.empirical_ntk_fn``.

Requests (answers carry ``"error"`` instead when anything raises):

    {"cmd": "load", "npz": PATH, "x": PATH.npy or null}  -> {"P", "C", "N", "rss_mb", "maxrss_mb", ...}
    {"cmd": "prepare", "method": "nt1"|"nt2"|"nt3", "kind": "trntk"|"entk"}
                                                         -> {"compile_s"}  (jit lower + compile, full N)
    {"cmd": "run", "method", "kind", "save": PATH.npy or null} -> {"seconds", "maxrss_mb"}
    {"cmd": "quit"}

``nt<k>``: ``NtkImplementation(k)`` (1 Jacobian contraction, 2 NTK-vector products, 3
structured derivatives). Saved kernels are in ntkbench's layout and scale: trntk is the
unnormalised trace NTK sum_c <g^c_i, g^c_j> (= ntkbench's trntk0; neural-tangents averages over
traced axes, so its value is multiplied by C) and entk is (N, N, C, C).

``--dtype float64`` enables ``jax_enable_x64`` (the value-check pass). Threads come from the
environment the parent sets (CPU affinity, ``XLA_FLAGS``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    """Current resident set size (VmRSS), MB; NaN where /proc is not readable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Worker:
    def __init__(self, dtype: str):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # neural_tangents imports tensorflow
        import jax

        jax.config.update("jax_enable_x64", dtype == "float64")
        import jax.numpy as jnp
        import neural_tangents as nt
        import numpy as np

        sys.path.insert(0, HERE)
        import family_port

        self.jax, self.jnp, self.nt, self.np, self.port = jax, jnp, nt, np, family_port
        self.dtype = jnp.float64 if dtype == "float64" else jnp.float32
        self.ops = family_port.JaxOps()
        self.compiled: dict = {}

    def load(self, npz: str, x: str | None = None) -> dict:
        np, jnp = self.np, self.jnp
        self.compiled.clear()
        name, spec, params, consts, x_npz = self.port.load_npz(npz)
        xs = np.load(x) if x else x_npz
        self.params = {k: jnp.asarray(v, self.dtype) for k, v in params.items()}
        consts = {k: jnp.asarray(v, self.dtype) for k, v in consts.items()}
        self.x = jnp.asarray(xs, self.dtype) if np.issubdtype(xs.dtype, np.floating) else jnp.asarray(xs)
        port, ops = self.port, self.ops
        self.apply = lambda p, xb: port.forward(spec, ops, p, consts, xb)
        self.C = int(self.apply(self.params, self.x[:1]).shape[-1])
        return {"name": name, "P": int(sum(v.size for v in params.values())), "C": self.C, "N": int(self.x.shape[0]),
                "rss_mb": rss_mb(), "maxrss_mb": maxrss_mb(), "jax": self.jax.__version__, "nt": self.nt.__version__}

    def prepare(self, method: str, kind: str) -> dict:
        nt = self.nt
        impl = nt.NtkImplementation(int(method.removeprefix("nt")))
        ntk = nt.empirical_ntk_fn(self.apply, trace_axes=(-1,) if kind == "trntk" else (), vmap_axes=0,
                                  implementation=impl)
        start = time.perf_counter()
        compiled = self.jax.jit(lambda xb, p: ntk(xb, None, p)).lower(self.x, self.params).compile()
        self.compiled[method, kind] = compiled
        return {"compile_s": time.perf_counter() - start, "maxrss_mb": maxrss_mb()}

    def run(self, method: str, kind: str, save: str | None = None) -> dict:
        if (method, kind) not in self.compiled:
            self.prepare(method, kind)
        fn = self.compiled[method, kind]
        start = time.perf_counter()
        k = fn(self.x, self.params).block_until_ready()
        seconds = time.perf_counter() - start
        if save:
            k = self.np.asarray(k)
            if kind == "trntk":
                k = k * self.C  # neural-tangents' mean over the traced class axis -> the sum
            elif k.shape != (self.x.shape[0], self.x.shape[0], self.C, self.C):
                raise ValueError(f"unexpected entk shape {k.shape}")
            self.np.save(save, k)
        del k
        return {"seconds": seconds, "maxrss_mb": maxrss_mb()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()
    return serve(lambda: Worker(args.dtype),
                 lambda w: {"jax": w.jax.__version__, "nt": w.nt.__version__})


def serve(make_worker, describe=lambda worker: {}) -> int:
    """The worker side of the line protocol (also benchmarks/peers.py's torch workers): one JSON
    hello ({"ready": true, ...} or {"error": ...}), then one JSON answer per request
    {"cmd": <method of the worker>, **kwargs} until {"cmd": "quit"}; an exception becomes
    {"error": ...}, the worker carries on."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not break the protocol
    try:
        worker = make_worker()
        hello = {"ready": True, **describe(worker)}
    except Exception as err:  # noqa: BLE001 - reported to the parent, which records the peer as failed
        hello = {"error": f"{type(err).__name__}: {err}"}
    out.write(json.dumps(hello) + "\n")
    out.flush()
    if "error" in hello:
        return 1
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req.pop("cmd")
        if cmd == "quit":
            break
        try:
            answer = getattr(worker, cmd)(**req)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            answer = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:400]}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
