"""CIFAR MobileNetV2 of paper 001's zoo (appendix K; Sandler et al. 2018).

Stem 3×3 conv (32 channels) with stride 1 instead of ImageNet's 2, then inverted residual
blocks from a table of rows (t, c, n, s): n blocks with expansion t, c output channels, the
first with stride s. Each block: 1×1 expansion conv (omitted when t = 1) → BN → ReLU6 →
depthwise 3×3 conv (groups = channels) → BN → ReLU6 → 1×1 linear-bottleneck projection → BN
(no activation), plus the identity when stride 1 and channels are unchanged. Then a 1×1 conv
to ``last_channel`` → BN → ReLU6, global average pooling and a linear classifier.

The CIFAR table (:data:`CIFAR_BLOCKS`) also sets the stride of the second row to 1 (as the
common CIFAR implementations do), so 32×32 inputs end at 4×4 rather than 1×1. Strides do not
change the parameter count: 2,236,682 with ``width_mult=1``, 3 input channels and ten classes,
the same as torchvision's MobileNetV2 with a ten-class head.

Channels are ``width_mult``·c rounded to a multiple of ``divisor`` (torchvision's rule);
``blocks`` replaces the table so that tests and the embedded default can build tiny networks.
Every parameter lives in an nn.Conv2d (depthwise ones included: the kernel engine's fast path
materialises their per-sample gradients), nn.BatchNorm2d or nn.Linear.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ntkbench.models import register

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2", "CIFAR_BLOCKS", "make_divisible"]

#: (expansion t, output channels c, repeats n, first stride s), CIFAR strides.
CIFAR_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int) -> int:
    """Nearest multiple of ``divisor`` ≥ divisor that does not go more than 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, act: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """(N, Cin, H, W) → (N, Cout, H/stride, W/stride); residual when shapes agree."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(in_ch, hidden, 1, 1, 1, act=True))
        layers.append(_conv_bn(hidden, hidden, 3, stride, hidden, act=True))  # depthwise
        layers.append(_conv_bn(hidden, out_ch, 1, 1, 1, act=False))  # linear bottleneck
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Logits (N, num_outputs) of images (N, C, H, W)."""

    def __init__(self, in_ch: int, num_outputs: int, blocks: Sequence[Sequence[int]], width_mult: float,
                 divisor: int, stem_channels: int, last_channel: int, dropout: float) -> None:
        super().__init__()
        ch = make_divisible(stem_channels * width_mult, divisor)
        last = make_divisible(last_channel * max(1.0, width_mult), divisor)
        layers: list[nn.Module] = [_conv_bn(in_ch, ch, 3, 1, 1, act=True)]
        for t, c, n, s in blocks:
            out_ch = make_divisible(c * width_mult, divisor)
            for i in range(n):
                layers.append(InvertedResidual(ch, out_ch, s if i == 0 else 1, t))
                ch = out_ch
        layers.append(_conv_bn(ch, last, 1, 1, 1, act=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"mobilenetv2 expects images (N, C, H, W), got shape {tuple(x.shape)}")
        h = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.dropout(h))


@register("mobilenetv2")
def mobilenetv2(input_shape: Sequence[int], num_outputs: int, width_mult: float = 1.0,
                blocks: Sequence[Sequence[int]] | None = None, divisor: int = 8, stem_channels: int = 32,
                last_channel: int = 1280, dropout: float = 0.2) -> MobileNetV2:
    """CIFAR MobileNetV2; ``blocks`` rows (t, c, n, s) default to :data:`CIFAR_BLOCKS`.

    ``dropout`` before the classifier (0.2, as torchvision's and Phan's CIFAR weights that
    paper 001 used). Initialisation as torchvision's: Kaiming-normal (fan-out) convs, BN weight 1 / bias 0,
    linear N(0, 0.01²) with zero bias.
    """
    if len(input_shape) != 3:
        raise ValueError(f"mobilenetv2 needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
    rows = [tuple(int(v) for v in row) for row in (CIFAR_BLOCKS if blocks is None else blocks)]
    for row in rows:
        if len(row) != 4 or min(row) < 1:
            raise ValueError(f"model.blocks: each row must be 4 positive integers (t, c, n, s), got {list(row)}")
    if width_mult <= 0 or divisor < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"mobilenetv2: need width_mult > 0, divisor >= 1, 0 <= dropout < 1; "
                         f"got {width_mult}, {divisor}, {dropout}")
    net = MobileNetV2(int(input_shape[0]), num_outputs, rows, width_mult, divisor, stem_channels,
                      last_channel, dropout)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return net
