"""Gromov's modular-arithmetic MLP (SPEC §4.2), mean-field scaled, no biases, quadratic activation."""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from ntkbench.models import register
from ntkbench.models.classifiers import Scale

__all__ = ["Square", "modmlp"]


class Square(nn.Module):
    """Elementwise x² (parameter-free)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


@register("modmlp")
def modmlp(p: int = 29, width: int = 512) -> nn.Sequential:
    """Linear(2p → width, no bias) · 1/sqrt(2p) → x² → Linear(width → p, no bias) · 1/width.

    All weights N(0, 1). Plain nn.Linear layers followed by parameter-free scales, so the
    kernel engine's factorised fast path applies; the two parameter groups are ``layer1`` and
    ``layer2``.
    """
    if p < 2 or width < 1:
        raise ValueError(f"modmlp needs p >= 2 and width >= 1, got p={p}, width={width}")
    net = nn.Sequential(OrderedDict([
        ("layer1", nn.Linear(2 * p, width, bias=False)),
        ("scale1", Scale(1.0 / math.sqrt(2 * p))),
        ("square", Square()),
        ("layer2", nn.Linear(width, p, bias=False)),
        ("scale2", Scale(1.0 / width)),
    ]))
    for module in (net.layer1, net.layer2):
        nn.init.normal_(module.weight, mean=0.0, std=1.0)
    return net
