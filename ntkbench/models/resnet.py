"""CIFAR ResNet18 / ResNet34 of paper 001's zoo (appendix K; He et al. 2016, CIFAR variant).

The CIFAR variant keeps 32×32 resolution in the stem: one 3×3 stride-1 convolution, no max-pool
(the ImageNet 7×7 stride-2 conv + pool would shrink CIFAR images to 8×8 before the first
block). Then four stages of BasicBlocks ([2,2,2,2] for ResNet18, [3,4,6,3] for ResNet34) with
``width``, 2·width, 4·width, 8·width channels, the later three starting with stride 2; a block
whose shape changes adds a 1×1 conv + BatchNorm projection to its shortcut. Global average
pooling and one linear layer give the logits. With ``width=64``, 3×32×32 inputs and ten
classes: 11,173,962 (ResNet18) and 21,282,122 (ResNet34) parameters.

Module names follow torchvision's (conv1, bn1, layer1..4 with blocks conv1/bn1/conv2/bn2,
avgpool, fc), so paper 001's embedding-kernel layer list (Table 6) applies by name.
Every parameter lives in an nn.Conv2d (groups 1), nn.BatchNorm2d or nn.Linear, so the kernel
engine's fast path covers the whole network. Convolutions have no bias (BatchNorm follows).
Features are flattened with ``flatten`` rather than ``view`` so channels-last conv outputs
(the engine's CPU layout) work.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ntkbench.models import register

__all__ = ["BasicBlock", "CifarResNet", "resnet18", "resnet34", "STAGES"]

#: Blocks per stage of each depth.
STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); (N, Cin, H, W) → (N, Cout, H/s, W/s)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()  # the block's output (activation modules are the default em layers)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Logits (N, num_outputs) of images (N, C, H, W); any C and H, W ≥ 1."""

    def __init__(self, in_ch: int, num_outputs: int, blocks: Sequence[int], width: int) -> None:
        super().__init__()
        # torchvision's module names (conv1, bn1, layer1..4, avgpool, fc), so that paper 001's
        # embedding-kernel layer list (its Table 6) names modules of this network.
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages, ch = [], width
        for i, n in enumerate(blocks):
            out_ch = width * 2 ** i
            layer = [BasicBlock(ch, out_ch, 1 if i == 0 else 2)]
            layer += [BasicBlock(out_ch, out_ch, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"resnet expects images (N, C, H, W), got shape {tuple(x.shape)}")
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(torch.flatten(self.avgpool(h), 1))


def _build(depth: int, input_shape: Sequence[int], num_outputs: int, width: int) -> CifarResNet:
    if len(input_shape) != 3:
        raise ValueError(f"resnet{depth} needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
    if width < 1 or num_outputs < 1:
        raise ValueError(f"resnet{depth}: model.width and num_outputs must be >= 1, got {width}, {num_outputs}")
    return CifarResNet(int(input_shape[0]), num_outputs, STAGES[depth], width)


@register("resnet18")
def resnet18(input_shape: Sequence[int], num_outputs: int, width: int = 64) -> CifarResNet:
    """CIFAR ResNet18 (BasicBlocks [2,2,2,2]); ``width`` base channels (64 in the paper).

    PyTorch's default initialisation (as in the reference CIFAR implementations).
    """
    return _build(18, input_shape, num_outputs, width)


@register("resnet34")
def resnet34(input_shape: Sequence[int], num_outputs: int, width: int = 64) -> CifarResNet:
    """CIFAR ResNet34 (BasicBlocks [3,4,6,3]); ``width`` base channels (64 in the paper)."""
    return _build(34, input_shape, num_outputs, width)
