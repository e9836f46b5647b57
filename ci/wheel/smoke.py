"""Smoke test of an installed ntkbench wheel, run from a fresh venv outside the checkout
(ci/wheel/wheel_test.sh): the package imports from site-packages, validates a config through
its packaged schema, and computes a kernel equal to brute-force autograd. With transformers
importable (the wheel's ``hf`` extra), a tiny Hugging Face classifier saved with
``save_pretrained`` loads through ``ntkbench.models.from_pretrained`` and its kernel equals
brute force too; without it, that part is skipped (and loading must say how to install it).

    [WHEEL_EXTRAS=hf] python smoke.py CONFIG.yaml

``WHEEL_EXTRAS`` lists the extras the wheel was installed with: with ``hf`` among them a
missing transformers is an error, not a skip.
"""
import importlib.metadata
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import ntkbench
from ntkbench import kernels, models
from ntkbench.config import SCHEMA_RESOURCE, load_config

try:
    import transformers
except ImportError:
    transformers = None


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
    huggingface_smoke("hf" in os.environ.get("WHEEL_EXTRAS", "").split(","))
    print("wheel smoke test passed")


def huggingface_smoke(required: bool) -> None:
    """from_pretrained on a tiny GPT-2 classifier (padded inputs): the HF model's own logits,
    and trntk equal to brute-force autograd; without transformers, the ImportError."""
    if transformers is None:
        assert not required, "WHEEL_EXTRAS has hf but transformers does not import"
        try:
            models.from_pretrained("no-such-checkpoint")
        except ImportError as err:
            assert "ntkbench[hf]" in str(err), err
        else:
            raise AssertionError("from_pretrained without transformers did not raise ImportError")
        print("transformers is not installed: Hugging Face smoke test skipped")
        return
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, n_positions=8,
                                     pad_token_id=0, num_labels=3)
    hf = transformers.GPT2ForSequenceClassification(config).eval()
    ids = torch.randint(1, 20, (4, 5))
    ids[0, 3:] = 0  # padding: the classifier reads the last non-pad token
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = models.from_pretrained(tmp)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=(ids != 0).long()).logits
        torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-6)
    k = kernels.compute(model, ids, kind="trntk", dtype=torch.float64)
    torch.testing.assert_close(k, brute_trntk(model.double(), ids), rtol=1e-9, atol=1e-10)
    print(f"transformers {transformers.__version__}: a saved GPT-2 classifier loads through from_pretrained; "
          "its trntk equals brute-force autograd")


if __name__ == "__main__":
    main(sys.argv[1])
