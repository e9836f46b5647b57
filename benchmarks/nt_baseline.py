"""neural-tangents (JAX, CPU) side of the optional side-by-side baseline (see scaling.py --nt).

Needs only numpy, jax and neural-tangents (``pip install -e .[bench-nt]``), not torch, so it
can also run under another interpreter (``scaling.py --nt-python /path/to/python``). Reads an
.npz with the MLP's weights (``w0, b0, w1, b1, ...`` in torch's (out, in) layout) and inputs
``x`` (N, d); writes the unnormalised trace NTK sum_c <g^c(x_i), g^c(x_j)> (= ntkbench's
trntk0) / C (neural-tangents averages traced axes) to ``out.npy`` and prints one JSON line {"seconds": best, "runs": [...]}.

    python nt_baseline.py weights.npz out.npy --repeat 3 --impl 3

``--impl``: neural-tangents' NtkImplementation (1 Jacobian contraction, 2 NTK-vector
products, 3 structured derivatives, 0 auto).
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("out")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--impl", type=int, default=3)
    args = parser.parse_args()
    try:
        import jax
        import neural_tangents as nt
        import numpy as np
        from neural_tangents import stax
    except ImportError as err:
        print(json.dumps({"skipped": f"neural-tangents/jax not importable: {err}"}))
        return 0
    jax.config.update("jax_enable_x64", False)
    data = np.load(args.weights)
    x = data["x"].astype(np.float32)
    n_layers = sum(1 for k in data.files if k.startswith("w"))
    layers = []
    params = []
    for i in range(n_layers):
        w, b = data[f"w{i}"], data[f"b{i}"]
        # 'standard' parameterisation: y = x W + b, as torch's nn.Linear (W transposed).
        layers.append(stax.Dense(w.shape[0], parameterization="standard"))
        params.append((jax.numpy.asarray(w.T), jax.numpy.asarray(b)))
        if i + 1 < n_layers:
            layers.append(stax.Relu())
            params.append(())
    _, apply_fn, _ = stax.serial(*layers)
    kernel_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                            implementation=nt.NtkImplementation(args.impl)))
    xj = jax.numpy.asarray(x)
    k = kernel_fn(xj[:8], None, params).block_until_ready()  # compile for the small shape
    runs = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        k = kernel_fn(xj, None, params).block_until_ready()  # includes compilation on the first run
        runs.append(time.perf_counter() - start)
    np.save(args.out, np.asarray(k))
    # The first full-size run compiles; best of the rest is the steady-state time.
    best = min(runs[1:]) if len(runs) > 1 else runs[0]
    print(json.dumps({"seconds": best, "runs": runs, "jax": jax.__version__, "nt": nt.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
