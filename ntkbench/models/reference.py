"""The MNIST2 networks of paper 001's reference code (pnnl/projection_ntk,
``scripts/smallmodeltrain/Analyze_multiple_NTK_{MLP,CNN}_MNIST2.py``), which produced Table 1.

Both follow the code, not the paper's text (the text describes a 12-layer CNN; the code's CNN
has three convolutions). Every weight and bias is drawn from N(0, 1) and the activations are
divided by fixed constants (an NTK-style parameterisation), one output logit (sigmoid):

* ``mnist2-ref-mlp``: Linear(784,100) → ÷10 → ReLU → Linear(100,100) → ÷10 → ReLU →
  Linear(100,100) → ÷10 → ReLU → Linear(100,1). All three hidden pre-activations are divided by
  10 = sqrt(100), the first one too, although its fan-in is 784.
* ``mnist2-ref-cnn``: Conv(1→64, 3, pad 1) → ReLU → ÷sqrt(576) → AvgPool 2 → ReLU →
  Conv(64→32) → ReLU → ÷sqrt(288) → AvgPool 2 → ReLU → Conv(32→8) → ReLU → ÷sqrt(72) →
  AvgPool 2 → ReLU → flatten (72) → Linear(72,128) → ReLU → ÷sqrt(128) → Linear(128,64) →
  ReLU → ÷8 → Linear(64,1). The divisors are (output channels × 9) of each convolution, as
  in the code (``8·WIDTH·3·3`` with WIDTH = 8), not the fan-in.

The scalings are parameter-free :class:`~ntkbench.models.classifiers.Scale` modules, so the
layers stay plain ``nn.Linear``/``nn.Conv2d`` for the kernel engine's fast path.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from ntkbench.models import register
from ntkbench.models.classifiers import Scale

__all__ = ["mnist2_ref_mlp", "mnist2_ref_cnn"]


def _normal_init(module: nn.Module) -> nn.Module:
    """N(0, 1) weights and biases for every Linear and Conv2d (the reference's ``NTK_weights``)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight)
            if m.bias is not None:
                nn.init.normal_(m.bias)
    return module


def _check_outputs(name: str, num_outputs: int) -> None:
    if num_outputs != 1:
        raise ValueError(f"{name} has one output logit (binary task, sigmoid); the data give "
                         f"num_outputs={num_outputs}: pick two classes (data.classes)")


@register("mnist2-ref-mlp")
def mnist2_ref_mlp(input_shape: Sequence[int], num_outputs: int = 1) -> nn.Sequential:
    """The reference MLP: three hidden ReLU layers of width 100, each pre-activation ÷ 10."""
    _check_outputs("mnist2-ref-mlp", num_outputs)
    width, scale = 100, 1.0 / math.sqrt(100)
    fan_in = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for d_in in (fan_in, width, width):
        layers += [nn.Linear(d_in, width), Scale(scale), nn.ReLU()]
    layers.append(nn.Linear(width, 1))
    return _normal_init(nn.Sequential(*layers))


@register("mnist2-ref-cnn")
def mnist2_ref_cnn(input_shape: Sequence[int], num_outputs: int = 1) -> nn.Sequential:
    """The reference CNN: three conv/avg-pool blocks (64, 32, 8 channels) and three FC layers."""
    _check_outputs("mnist2-ref-cnn", num_outputs)
    if len(input_shape) != 3:
        raise ValueError(f"mnist2-ref-cnn needs (C, H, W) inputs, got input_shape {tuple(input_shape)}")
    in_ch, height, width = (int(s) for s in input_shape)
    if min(height, width) < 8:
        raise ValueError(f"mnist2-ref-cnn: {height}×{width} inputs are too small for three 2×2 pools")
    layers: list[nn.Module] = []
    for out_ch in (64, 32, 8):
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(), Scale(1.0 / math.sqrt(out_ch * 9)),
                   nn.AvgPool2d(2), nn.ReLU()]
        in_ch, height, width = out_ch, height // 2, width // 2
    layers += [nn.Flatten(),
               nn.Linear(in_ch * height * width, 128), nn.ReLU(), Scale(1.0 / math.sqrt(128)),
               nn.Linear(128, 64), nn.ReLU(), Scale(1.0 / math.sqrt(64)),
               nn.Linear(64, 1)]
    return _normal_init(nn.Sequential(*layers))
