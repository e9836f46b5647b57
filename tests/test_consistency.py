"""Every kernel kind and projection type on small models of odd sizes: float32 agrees with
float64, and the fast path with the generic one. (Such a sweep found a float32 projection that
failed for a 7 x 5 weight and Kronecker kernels that depended on the path.)"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkbench import kernels

F64 = torch.float64


class TextConv(nn.Module):
    """Embedding (padding index) + LayerNorm + Conv1d + ReLU + mean pool + Linear."""

    def __init__(self, vocab: int = 13, dim: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, 5, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(5, 3)

    def forward(self, ids):
        return self.head(self.act(self.conv(self.norm(self.emb(ids)).transpose(1, 2))).mean(-1))


def _odd_models():
    return {
        "mlp-bn1d": (nn.Sequential(nn.Linear(7, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)),
                     lambda n: torch.randn(n, 7)),
        "cnn-strided-dilated": (nn.Sequential(
            nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
            nn.Conv2d(5, 7, 2, dilation=2), nn.GroupNorm(1, 7), nn.ReLU(),
            nn.Conv2d(7, 7, 1, groups=7, bias=False), nn.Flatten(), nn.Linear(7 * 4 * 3, 3)),
            lambda n: torch.randn(n, 3, 11, 9)),
        "text-conv": (TextConv(), lambda n: torch.randint(0, 13, (n, 7))),
    }


CASES = [(kind, {}) for kind in kernels.KINDS if not kind.startswith("proj")] + [
    (kind, {"proj_type": t}) for kind in ("proj-trntk", "proj-pntk") for t in ("gaussian", "rademacher", "kronecker")
]


@pytest.mark.parametrize("name", list(_odd_models()))
def test_kinds_agree_across_dtype_and_path(name):
    model, sample = _odd_models()[name]
    torch.manual_seed(0)
    model.eval()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    x, y = sample(11), sample(5)
    for kind, extra in CASES:
        opts = dict(extra, proj_dim=37) if kind.startswith("proj") else dict(extra)
        if kind == "em" and name == "text-conv":
            opts["layers"] = ["act"]
        k64 = kernels.compute(model, y, x, kind=kind, batch_size=4, dtype=F64, **opts)
        k32 = kernels.compute(model, y, x, kind=kind, batch_size=4, **opts)
        generic = kernels.compute(model, y, x, kind=kind, batch_size=3, dtype=F64, impl="generic", **opts)
        scale = k64.abs().max()
        assert float((k32.double() - k64).abs().max() / scale) < 1e-4, (kind, extra)
        assert float((generic - k64).abs().max() / scale) < 1e-8, (kind, extra)
