"""Image classifiers of paper 001's zoo, sized for the embedded digits default."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ntkbench.models import register


class Scale(nn.Module):
    """Multiply by a fixed constant (NTK parameterisation's 1/sqrt(fan-in))."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:.6g}"


def ntk_linear(fan_in: int, fan_out: int) -> nn.Sequential:
    """Linear layer in NTK parameterisation: N(0, 1) weights, output divided by sqrt(fan-in).

    Kept as a plain nn.Linear followed by a Scale so the kernel engine's fast path (which
    recognises nn.Linear) applies; the scale is parameter-free and folds into the gradients.
    """
    linear = nn.Linear(fan_in, fan_out)
    nn.init.normal_(linear.weight)
    nn.init.normal_(linear.bias)
    return nn.Sequential(linear, Scale(1.0 / math.sqrt(fan_in)))


@register("mlp")
def mlp(input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int] = (100, 100, 100),
        parameterisation: str = "ntk", dropout: float = 0.0) -> nn.Sequential:
    """Fully connected ReLU network (paper 001, K.2.1): logits, no final activation.

    ``parameterisation="ntk"``: N(0,1) init, each layer's output divided by sqrt(fan-in);
    ``"standard"``: PyTorch's default nn.Linear layers. ``hidden=[]`` is logistic regression
    (one Linear). ``dropout > 0`` adds ``nn.Dropout(dropout)`` after each hidden ReLU (dattri's
    MNIST MLP: 784 → 128 → 64 → 10 with dropout 0.1); it is active in training only, and the
    kernels and attributions see the network in eval mode. With ``dropout = 0`` no module is
    added, so the parameter names do not move.
    """
    if parameterisation not in ("ntk", "standard"):
        raise ValueError(f"model.parameterisation must be 'ntk' or 'standard', got {parameterisation!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"model.dropout must lie in [0, 1), got {dropout!r}")
    widths = [math.prod(input_shape), *hidden, num_outputs]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(ntk_linear(fan_in, fan_out) if parameterisation == "ntk" else nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout)))
    return nn.Sequential(*layers)


@register("cnn")
def cnn(input_shape: Sequence[int], num_outputs: int, channels: Sequence[int] = (8, 16, 32),
        hidden: int = 64) -> nn.Sequential:
    """Small CNN in the shape of paper 001's K.2.2 model, scaled to 8×8 inputs.

    conv(3×3) + batch-norm + ReLU blocks, the later ones with stride 2 to halve the feature map,
    then two fully connected layers with one logit per output.
    """
    in_ch, height, width = input_shape
    layers: list[nn.Module] = []
    for i, out_ch in enumerate(channels):
        stride = 1 if i == 0 else 2
        layers += [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU()]
        in_ch = out_ch
        if stride == 2:
            height, width = (height + 1) // 2, (width + 1) // 2
    layers += [nn.Flatten(), nn.Linear(in_ch * height * width, hidden), nn.ReLU(),
               nn.Linear(hidden, num_outputs)]
    return nn.Sequential(*layers)
