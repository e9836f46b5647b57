"""Activation-based kernels: the conjugate kernel (CK) and the embedding kernel (Em).

* ``ck``: features = the input of the last ``nn.Linear`` executed in the forward (the final
  embedding), compared by cosine similarity.
* ``em``: features = the outputs of the chosen layers, flattened per sample; the kernel is
  the sum over layers of their Grams, cosine-normalised by the diagonal of that sum.
  Default layers: every activation module (ReLU, GELU, Tanh, ... see ``ACTIVATION_TYPES``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

from .forward import checked_forward
from .reps import DenseGrad

__all__ = ["ACTIVATION_TYPES", "ActivationFeatures", "default_em_layers"]

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh,
    nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink,
)


def default_em_layers(model: nn.Module) -> list[str]:
    """Qualified names of the activation modules, the default ``em`` layers."""
    return [name for name, mod in model.named_modules() if name and isinstance(mod, ACTIVATION_TYPES)]


class ActivationFeatures:
    """Per-sample activation features of a batch, as ``{part: [DenseGrad (B, 1, D)]}``.

    Parts are the em layers (so ``layerwise`` splits Em by layer) or the single part
    ``"embedding"`` for ck. A :class:`ntkbench.kernels.engine.FeatureSource`.
    """

    whole_input = False  # no per-call cost to amortise: batches of batch_size

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, torch.Tensor],
        others: dict[str, torch.Tensor],
        kind: str,
        layers: Sequence[str] | None = None,
    ) -> None:
        self.model, self.params, self.others, self.kind = model, params, others, kind
        modules = dict(model.named_modules())
        if kind == "ck":
            if layers is not None:
                raise ValueError("layers= applies to kind='em' only; ck always uses the last nn.Linear's input")
            self.layers: list[str] = []
        else:
            chosen = default_em_layers(model) if layers is None else list(layers)
            if not chosen:
                raise ValueError(
                    f"model {type(model).__name__} has no activation modules ({', '.join(t.__name__ for t in ACTIVATION_TYPES[:5])}, ...); "
                    "pass layers=[module names] for kind='em'"
                )
            unknown = [n for n in chosen if n not in modules or not n]
            if unknown:
                raise ValueError(f"unknown em layer(s) {unknown}; modules are: {[n for n in modules if n]}")
            self.layers = chosen
        self.modules = modules

    def reps(self, xb: torch.Tensor) -> dict[str, list[DenseGrad]]:
        B = xb.shape[0]
        captured: dict[str, list[torch.Tensor]] = {}
        handles = []
        if self.kind == "ck":
            for mod in self.modules.values():
                if isinstance(mod, nn.Linear):
                    def hook(m, inputs, out):  # the last Linear to run overwrites the earlier ones
                        captured["embedding"] = [inputs[0].detach().reshape(B, -1)]
                    handles.append(mod.register_forward_hook(hook))
            if not handles:
                raise ValueError(f"kind='ck' needs an nn.Linear layer; model {type(self.model).__name__} has none")
        else:
            for name in self.layers:
                def hook(m, inputs, out, name=name):
                    captured.setdefault(name, []).append(out.detach().reshape(B, -1).clone())
                handles.append(self.modules[name].register_forward_hook(hook))
        try:
            with torch.no_grad():
                checked_forward(
                    self.model, xb, lambda t: functional_call(self.model, {**self.others, **self.params}, (t,))
                )
        finally:
            for h in handles:
                h.remove()
        if self.kind == "ck" and "embedding" not in captured:
            raise ValueError("kind='ck': no nn.Linear layer ran in the forward pass")
        out: dict[str, list[DenseGrad]] = {}
        for part in (["embedding"] if self.kind == "ck" else self.layers):
            if part not in captured:
                raise ValueError(f"em layer {part!r} did not run in the forward pass")
            feats = torch.cat(captured[part], dim=1)
            out[part] = [DenseGrad(feats.unsqueeze(1), [(part, (feats.shape[1],))])]
        return out
