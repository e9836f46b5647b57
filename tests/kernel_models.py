"""Small models and a brute-force eNTK for the kernel tests."""
from __future__ import annotations

import copy

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in: int = 6, width: int = 8, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, classes)
        )

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Conv2d + BatchNorm2d (eval) + Conv1d-free CNN with a linear head, on 1x8x8 inputs."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
            nn.Conv2d(4, 5, 3, stride=2), nn.ReLU(), nn.GroupNorm(1, 5),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(5 * 3 * 3, 7), nn.ReLU(), nn.Linear(7, classes))

    def forward(self, x):
        return self.head(self.features(x))


class ViewCNN(nn.Module):
    """Convs as written in much older code: one without bias applied twice, and the last
    feature map flattened with ``.view`` (which needs the default NCHW strides). The first
    conv has fewer patch entries than output channels (its gradients are stored transposed)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.c1 = nn.Conv2d(2, 12, 2, padding=1)  # 8x8 -> 9x9
        self.c2 = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(12, 3, 3, stride=2)  # -> 4x4
        self.fc = nn.Linear(3 * 4 * 4, classes)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(torch.relu(self.c2(h))))
        h = torch.tanh(self.c3(h))
        return self.fc(h.view(h.shape[0], -1))


class BinaryNet(nn.Module):
    """Single-logit (C = 1) output of shape (N,), with an NTK-style parameter-free scale."""

    def __init__(self, d_in: int = 5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 6)
        self.fc2 = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.relu(self.fc1(x) / d_scale(x.shape[1]))
        return self.fc2(h).squeeze(1)


def d_scale(n: int) -> float:
    return n ** 0.5


class TokenNet(nn.Module):
    """Embedding (with padding_idx) + LayerNorm + Conv1d over the sequence + mean-pool head."""

    def __init__(self, vocab: int = 11, dim: int = 6, classes: int = 2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)  # applied per position (3-D input)
        self.conv = nn.Conv1d(dim, 4, 2, dilation=2, padding=1)
        self.act = nn.GELU()
        self.out = nn.Linear(4, classes)

    def forward(self, tokens):
        h = self.mix(self.norm(self.emb(tokens)))  # (B, T, dim)
        h = self.act(self.conv(h.transpose(1, 2)))  # (B, 4, T)
        return self.out(h.mean(-1))


class OddNet(nn.Module):
    """Parameters the fast path cannot factorise: a root parameter, a weight also used
    functionally outside its module, and a reused module."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.3, 0.7, 1.1, 0.9]))
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.fc(x * self.scale))
        h = torch.tanh(self.fc(h)) + 0.1 * torch.nn.functional.linear(h, self.fc.weight)  # reuse + functional
        return self.head(h)


def brute_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C, P) per-sample, per-class gradients by one autograd.grad call each (float64)."""
    model = copy.deepcopy(model).double().eval()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for n in range(x.shape[0]):
        xi = x[n : n + 1]
        xi = xi.double() if xi.is_floating_point() else xi
        out = model(xi).reshape(1, -1)[0]
        per_class = []
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True, allow_unused=True)
            per_class.append(torch.cat([
                (g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)
            ]))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


def brute_kernels(jx: torch.Tensor, jy: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference values of every gradient kernel from brute-force Jacobians."""
    C = jx.shape[1]
    entk = torch.einsum("icp,jdp->ijcd", jx, jy)
    tr0 = entk.diagonal(dim1=2, dim2=3).sum(-1)
    p0 = entk.sum((2, 3)) / C
    dtx, dty = jx.pow(2).sum((1, 2)), jy.pow(2).sum((1, 2))
    sx, sy = jx.sum(1), jy.sum(1)
    dpx, dpy = sx.pow(2).sum(1) / C, sy.pow(2).sum(1) / C
    return {
        "entk": entk,
        "trntk0": tr0,
        "pntk0": p0,
        "trntk": tr0 / torch.sqrt(dtx[:, None] * dty[None]),
        "pntk": p0 / torch.sqrt(dpx[:, None] * dpy[None]),
    }


def with_bn_stats(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so eval-mode batch norm is not the
    identity (a kernel test on a fresh BN model would not see a wrong BN gradient)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.5, 0.5, generator=g)
    return model


def assert_kernels_match(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ref_xy: dict, ref_xx: dict,
                         kinds, impl: str, label: str) -> None:
    """``kernels.compute`` in float64 equals the brute-force references (``brute_kernels``) for
    every kind, on (x, y) and on (x, x), to rtol 1e-9 / atol 1e-10."""
    from ntkbench import kernels

    for kind in kinds:
        k = kernels.compute(model, x, y, kind, dtype=torch.float64, impl=impl)
        torch.testing.assert_close(k, ref_xy[kind], rtol=1e-9, atol=1e-10, msg=f"{label} {kind} {impl}")
        kxx = kernels.compute(model, x, kind=kind, dtype=torch.float64, impl=impl)
        torch.testing.assert_close(kxx, ref_xx[kind], rtol=1e-9, atol=1e-10, msg=f"{label} {kind} {impl} xx")

