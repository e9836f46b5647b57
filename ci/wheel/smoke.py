"""Smoke test of an installed ntkbench wheel, run from a fresh venv outside the checkout
(ci/wheel/wheel_test.sh): the package imports from site-packages, validates a config through
its packaged schema, and computes a kernel equal to brute-force autograd.

    python smoke.py CONFIG.yaml
"""
import importlib.metadata
import sys
from pathlib import Path

import torch
from torch import nn

import ntkbench
from ntkbench import kernels
from ntkbench.config import SCHEMA_RESOURCE, load_config


def brute_trntk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised trace-NTK from per-sample, per-class gradients taken one by one."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi in x:
        out = model(xi[None])[0]
        rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[c], params, retain_graph=True)])
                                 for c in range(out.shape[0])]))
    g = torch.stack(rows)  # (N, C, P)
    k = torch.einsum("ncp,mcp->nm", g, g)
    d = k.diagonal().sqrt()
    return k / d[:, None] / d[None, :]


def main(config_path: str) -> None:
    here = Path(ntkbench.__file__).resolve()
    assert "site-packages" in here.parts, f"ntkbench imported from {here}, not from the installed wheel"
    assert importlib.metadata.version("ntkbench") == ntkbench.__version__, "two versions"
    schema = Path(str(SCHEMA_RESOURCE))
    assert schema.is_file() and "site-packages" in schema.parts, f"schema at {schema}"
    config = load_config(config_path)
    print(f"ntkbench {ntkbench.__version__} from {here.parent}; {config_path} valid "
          f"({len(config['experiments'])} experiments) against {schema}")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    k = kernels.compute(model, x, kind="trntk", dtype=torch.float64)
    torch.testing.assert_close(k, brute_trntk(model, x), rtol=1e-10, atol=1e-12)
    print(f"trntk of a small MLP equals brute-force autograd (max |k| off-diagonal "
          f"{float((k - torch.eye(6, dtype=k.dtype)).abs().max()):.3f})")
    print("wheel smoke test passed")


if __name__ == "__main__":
    main(sys.argv[1])
