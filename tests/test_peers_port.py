"""The weight port of benchmarks/peers.py (benchmarks/family_port.py) computes each family member
exactly: the torch-backed ported forward reproduces the module's logits, and the NTK of
``torch.func.jacrev`` of the ported function of (params, x) equals ``kernels.compute``. The JAX
side (benchmarks/peers_nt.py) runs the same port on another op namespace; neither jax,
neural-tangents nor nngeometry is needed here."""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import torch
from torch.func import jacrev, vmap

from ntkbench import kernels

F64 = torch.float64
_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, alias: str):
    spec = importlib.util.spec_from_file_location(alias, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


PORT = _load("family_port", "ntkbench_bench_family_port")
BENCH = _load("kernels", "ntkbench_bench_kernels")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops: one thread is faster than two, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ported_entk(spec, params, consts, x) -> torch.Tensor:
    """Brute force: per-sample Jacobians of the ported function w.r.t. every parameter."""
    ops = PORT.TorchOps()

    def single(p, xi):
        return PORT.forward(spec, ops, p, consts, xi.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(single), (None, 0))(params, x)  # {name: (N, C, *shape)}
    flat = torch.cat([j.flatten(2) for j in jac.values()], dim=2)  # (N, C, P)
    return torch.einsum("iap,jbp->ijab", flat, flat)


@pytest.mark.parametrize("name", list(BENCH.FAMILY))
def test_port_matches_module_and_ntk(name):
    model, x = BENCH.family_member(name, 2)
    model = model.to(F64)
    if x.is_floating_point():
        x = x.to(F64)
    spec, params, consts = PORT.export(model)
    assert set(params) == {k for k, _ in model.named_parameters()}
    params = {k: v.detach() for k, v in params.items()}
    consts = {k: v.detach() for k, v in consts.items()}
    with torch.no_grad():
        torch.testing.assert_close(PORT.forward(spec, PORT.TorchOps(), params, consts, x), model(x),
                                   rtol=1e-12, atol=1e-12)
    want = kernels.compute(model, x, kind="entk", dtype=F64)
    got = _ported_entk(spec, params, consts, x)
    assert got.shape == want.shape == (2, 2, 10, 10)
    err = ((got - want).norm() / want.norm()).item()
    assert err < 1e-10, f"{name}: rel. diff {err:.1e}"


def test_npz_round_trip_and_unported_module(tmp_path):
    model, x = BENCH.family_member("resnet-16-32-64-bn", 2)
    spec, params, consts = PORT.export(model)
    assert any(k.endswith("running_var") for k in consts) and not any("num_batches" in k for k in consts)
    path = str(tmp_path / "m.npz")
    PORT.save_npz(path, "resnet-16-32-64-bn", spec, params, consts, x)
    name, spec2, p2, c2, x2 = PORT.load_npz(path)
    assert name == "resnet-16-32-64-bn" and spec2 == spec and np.array_equal(x2, x.numpy())
    assert all(np.array_equal(p2[k], v.detach().numpy()) for k, v in params.items())
    assert all(np.array_equal(c2[k], v.numpy()) for k, v in consts.items())
    with pytest.raises(NotImplementedError, match="GELU"):
        PORT.export(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU()).eval())
    with pytest.raises(ValueError, match="eval"):
        PORT.export(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_port_imports_neither_jax_nor_torch_at_module_level():
    """peers_nt.py imports the port in an interpreter without torch; this one may lack jax."""
    text = (_BENCH / "family_port.py").read_text()
    top = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top if "torch" in line or "jax" in line], top


def _scale_csv(path, member: str, threads: int = 2) -> None:
    rows = [
        "member,method,N,P,status,seconds,compile_s,peak_mb,base_mb,growth_mb,load,threads,message",
        f"{member},ntkbench,250,100,ok,0.5,nan,900,400,500,1.0,{threads},",
        f"{member},jacrev,250,100,ok,2.0,nan,1400,400,1000,1.0,{threads},",
        f"{member},jacrev,1000,100,failed-oom,3.0,nan,20500,400,20100,1.0,{threads},killed",
    ]
    path.write_text("\n".join(rows) + "\n")


def test_scale_replot_merges_runs(tmp_path, monkeypatch):
    """``peers.py --plot a.csv,b.csv`` draws one figure from several --scale runs, with the
    numbers typed back (NaN where a run recorded none) and the runs' thread count."""
    import argparse

    peers = _load("peers", "ntkbench_bench_peers")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _scale_csv(a, "mlp")
    _scale_csv(b, "cnn")
    seen = {}
    monkeypatch.setattr(peers, "plot_scale", lambda rows, path, env: seen.update(rows=rows, path=path, env=env))
    args = argparse.Namespace(plot=f"{a},{b}", figure=str(tmp_path / "f.png"), time_limit=600.0, mem_limit_gb=20.0)
    assert peers.replot(args) == 0
    rows = seen["rows"]
    assert [r["member"] for r in rows] == ["mlp"] * 3 + ["cnn"] * 3
    assert rows[2]["N"] == 1000 and rows[2]["growth_mb"] == 20100.0 and np.isnan(rows[0]["compile_s"])
    assert seen["env"].threads == 2 and seen["env"].mem_limit_mb == 20.0 * 1024
    _scale_csv(b, "cnn", threads=1)
    with pytest.raises(SystemExit, match="different thread counts"):
        peers.replot(args)
