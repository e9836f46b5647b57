"""The CNN of Shan et al. (2022) used for paper 001's poisoning experiment (appendix K.2.5).

Paper 001 restates the architecture of Shan et al.'s Keras model: three repeats of
conv → BN → conv → BN → max-pool (channels 32, 64, 128; 3×3 'same' convolutions; ReLU after
every convolution, before its batch-norm, as in the Keras original), one more max-pool, flatten,
dropout 0.2, then FC → BN → FC → BN → FC (hidden width 512). On 3×32×32 CIFAR-10 with ten
classes this has exactly the 820,394 parameters paper 001 reports — that count pins down the
channel and hidden widths, which the appendix does not state.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from ntkbench.models import register


@register("shan-cnn")
def shan_cnn(input_shape: Sequence[int], num_outputs: int, channels: Sequence[int] = (32, 64, 128),
             hidden: Sequence[int] = (512, 512), dropout: float = 0.2) -> nn.Sequential:
    """Shan et al.'s poisoning CNN; ``channels`` per conv pair, ``hidden`` FC widths."""
    if len(input_shape) != 3:
        raise ValueError(f"shan-cnn needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    in_ch, height, width = input_shape
    pools = len(channels) + 1  # one pool per conv pair, plus the extra one before flattening
    if min(height, width) < 2 ** pools:
        raise ValueError(f"shan-cnn: {height}×{width} inputs are too small for {pools} 2×2 max-pools")
    layers: list[nn.Module] = []
    for out_ch in channels:
        for conv_in in (in_ch, out_ch):
            layers += [nn.Conv2d(conv_in, out_ch, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(out_ch)]
        layers.append(nn.MaxPool2d(2))
        in_ch = out_ch
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(dropout)]
    features = in_ch * (height // 2 ** pools) * (width // 2 ** pools)
    for width_out in hidden:
        layers += [nn.Linear(features, width_out), nn.ReLU(), nn.BatchNorm1d(width_out)]
        features = width_out
    layers.append(nn.Linear(features, num_outputs))
    return nn.Sequential(*layers)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (820,394 for the CIFAR-10 default)."""
    return sum(math.prod(p.shape) for p in model.parameters() if p.requires_grad)
