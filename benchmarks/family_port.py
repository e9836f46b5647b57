"""The architecture family (benchmarks/kernels.py FAMILY) as plain functions of (params, x), for
the peers that cannot take a torch module (neural-tangents in JAX), with the same weights.

The port is written once, against a tiny namespace of operations (``linear``, ``conv2d``,
``maxpool2d``, ``batchnorm``, ``layernorm``, ``softmax``, ...) that has two implementations:
:class:`TorchOps` and :class:`JaxOps`. ``tests/test_peers_port.py`` runs the torch-backed port
against the torch module (logits and the NTK of ``torch.func.jacrev`` of the ported function
against ``ntkbench.kernels.compute``), so the JAX-backed one that benchmarks/peers_nt.py runs
computes the same function as long as the two namespaces agree op by op, which is short to read.

Layouts are torch's throughout (NCHW activations, OIHW convolution kernels, (out, in) linear
weights); ``jax.lax.conv_general_dilated`` takes them through ``dimension_numbers``. BatchNorm is
eval mode: its running statistics are constants (``consts``), its weight and bias parameters.

    spec, params, consts = export(model)          # torch: names as in model.named_parameters()
    logits = forward(spec, TorchOps(), params, consts, x)
    save_npz(path, name, spec, params, consts, x) / load_npz(path)   # the exchange file

Imports neither torch nor jax at module level: the JAX side runs in an interpreter without
torch, the test in one without jax.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

Spec = dict[str, Any]


# -- the operations ---------------------------------------------------------------------------
class TorchOps:
    """The op namespace on torch tensors."""

    def __init__(self):
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F

    def linear(self, x, w, b):
        return self.F.linear(x, w, b)

    def conv2d(self, x, w, b, stride, padding):
        return self.F.conv2d(x, w, b, stride=tuple(stride), padding=tuple(padding))

    def relu(self, x):
        return self.torch.relu(x)

    def maxpool2d(self, x, kernel, stride):
        return self.F.max_pool2d(x, tuple(kernel), tuple(stride))

    def batchnorm(self, x, w, b, mean, var, eps):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = w / self.torch.sqrt(var + eps)
        return (x - mean.reshape(shape)) * scale.reshape(shape) + b.reshape(shape)

    def layernorm(self, x, w, b, eps):
        return self.F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def softmax(self, x, axis):
        return self.torch.softmax(x, dim=axis)

    def mean(self, x, axes, keepdims=False):
        return x.mean(dim=tuple(axes), keepdim=keepdims)

    def swapaxes(self, x, a, b):
        return x.transpose(a, b)


class JaxOps:
    """The op namespace on jax arrays (same layouts as :class:`TorchOps`)."""

    def __init__(self):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp, self.lax = jax, jnp, jax.lax

    def linear(self, x, w, b):
        y = x @ w.T
        return y if b is None else y + b

    def conv2d(self, x, w, b, stride, padding):
        y = self.lax.conv_general_dilated(x, w, window_strides=tuple(stride),
                                          padding=[(p, p) for p in padding],
                                          dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y if b is None else y + b.reshape(1, -1, 1, 1)

    def relu(self, x):
        return self.jnp.maximum(x, 0)

    def maxpool2d(self, x, kernel, stride):
        return self.lax.reduce_window(x, -self.jnp.inf, self.lax.max, (1, 1) + tuple(kernel),
                                      (1, 1) + tuple(stride), "VALID")

    def batchnorm(self, x, w, b, mean, var, eps):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = w / self.jnp.sqrt(var + eps)
        return (x - mean.reshape(shape)) * scale.reshape(shape) + b.reshape(shape)

    def layernorm(self, x, w, b, eps):
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / self.jnp.sqrt(var + eps) * w + b

    def softmax(self, x, axis):
        return self.jax.nn.softmax(x, axis=axis)

    def mean(self, x, axes, keepdims=False):
        return x.mean(axis=tuple(axes), keepdims=keepdims)

    def swapaxes(self, x, a, b):
        return self.jnp.swapaxes(x, a, b)


# -- the forward pass -------------------------------------------------------------------------
def forward(spec: Spec, ops, params: dict, consts: dict, x):
    """The ported model's logits (N, C) for a batch ``x`` (images (N, C, H, W) or token ids)."""
    return _apply(spec, ops, params, consts, x)


def _apply(node: Spec, ops, p: dict, c: dict, x):
    op = node["op"]
    if op == "seq":
        for layer in node["layers"]:
            x = _apply(layer, ops, p, c, x)
        return x
    if op == "linear":
        return ops.linear(x, p[node["w"]], p[node["b"]] if node["b"] else None)
    if op == "conv2d":
        return ops.conv2d(x, p[node["w"]], p[node["b"]] if node["b"] else None, node["stride"], node["padding"])
    if op == "relu":
        return ops.relu(x)
    if op == "flatten":
        return x.reshape(x.shape[0], -1)
    if op == "maxpool2d":
        return ops.maxpool2d(x, node["kernel"], node["stride"])
    if op == "gap":  # AdaptiveAvgPool2d(1)
        return ops.mean(x, (2, 3), keepdims=True)
    if op == "batchnorm":
        return ops.batchnorm(x, p[node["w"]], p[node["b"]], c[node["mean"]], c[node["var"]], node["eps"])
    if op == "resblock":  # kernels.ConvBlock
        h = ops.relu(_apply(node["b1"], ops, p, c, _apply(node["c1"], ops, p, c, x)))
        h = _apply(node["b2"], ops, p, c, _apply(node["c2"], ops, p, c, h))
        return ops.relu(h + _apply(node["short"], ops, p, c, x))
    if op == "resnet":  # kernels.ResNetSmall
        h = _apply(node["blocks"], ops, p, c, _apply(node["stem"], ops, p, c, x))
        return _apply(node["head"], ops, p, c, ops.mean(h, (2, 3)))
    if op == "attention":  # kernels.TinyAttention
        return _attention(node, ops, p, c, x)
    raise ValueError(f"unknown op {op!r}")


def _attention(node: Spec, ops, p: dict, c: dict, ids):
    B, T = ids.shape
    heads = node["heads"]
    lin = lambda name, t: _apply(node[name], ops, p, c, t)
    ln = lambda name, t: ops.layernorm(t, p[node[name]["w"]], p[node[name]["b"]], node[name]["eps"])
    h = p[node["tok"]][ids] + p[node["pos"]][:T]
    z = ln("ln1", h)
    split = lambda t: ops.swapaxes(t.reshape(B, T, heads, -1), 1, 2)  # (B, H, T, dh)
    q, k, v = split(lin("q", z)), split(lin("k", z)), split(lin("v", z))
    att = ops.softmax(q @ ops.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1]), -1)
    h = h + lin("o", ops.swapaxes(att @ v, 1, 2).reshape(B, T, -1))
    h = h + lin("ff2", ops.relu(lin("ff1", ln("ln2", h))))
    return lin("head", ops.mean(ln("ln3", h), (1,)))


# -- torch module -> spec ---------------------------------------------------------------------
def export(model) -> tuple[Spec, dict, dict]:
    """(spec, params, consts) of a family member (torch module in eval mode): ``params`` are
    ``model.named_parameters()`` (tensors, shared with the model), ``consts`` the buffers the
    forward reads (BatchNorm running statistics). Raises NotImplementedError for a module the
    port does not know, naming it."""
    if model.training:
        raise ValueError("export() ports eval-mode semantics: call model.eval() first")
    params = dict(model.named_parameters())
    consts = {k: v for k, v in model.named_buffers() if not k.endswith("num_batches_tracked")}
    return _node(model, ""), params, consts


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def _node(mod, prefix: str) -> Spec:
    from torch import nn

    name = type(mod).__name__
    if isinstance(mod, nn.Sequential):
        return {"op": "seq", "layers": [_node(m, f"{prefix}{k}.") for k, m in mod.named_children()]}
    if isinstance(mod, nn.Linear):
        return {"op": "linear", "w": prefix + "weight", "b": prefix + "bias" if mod.bias is not None else None}
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1 or _pair(mod.dilation) != [1, 1] or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise NotImplementedError(f"{prefix or 'model'}: Conv2d with groups/dilation/padding mode not ported")
        return {"op": "conv2d", "w": prefix + "weight", "b": prefix + "bias" if mod.bias is not None else None,
                "stride": _pair(mod.stride), "padding": _pair(mod.padding)}
    if isinstance(mod, nn.ReLU):
        return {"op": "relu"}
    if isinstance(mod, nn.Flatten):
        if (mod.start_dim, mod.end_dim) != (1, -1):
            raise NotImplementedError(f"{prefix}: Flatten({mod.start_dim}, {mod.end_dim}) not ported")
        return {"op": "flatten"}
    if isinstance(mod, nn.MaxPool2d):
        if _pair(mod.padding) != [0, 0] or _pair(mod.dilation) != [1, 1] or mod.ceil_mode:
            raise NotImplementedError(f"{prefix}: MaxPool2d with padding/dilation/ceil_mode not ported")
        return {"op": "maxpool2d", "kernel": _pair(mod.kernel_size), "stride": _pair(mod.stride or mod.kernel_size)}
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        if _pair(mod.output_size) != [1, 1]:
            raise NotImplementedError(f"{prefix}: AdaptiveAvgPool2d({mod.output_size}) not ported")
        return {"op": "gap"}
    if isinstance(mod, nn.BatchNorm2d):
        if not (mod.affine and mod.track_running_stats):
            raise NotImplementedError(f"{prefix}: BatchNorm2d without affine / running statistics not ported")
        return {"op": "batchnorm", "w": prefix + "weight", "b": prefix + "bias", "mean": prefix + "running_mean",
                "var": prefix + "running_var", "eps": float(mod.eps)}
    if name == "ConvBlock":
        return {"op": "resblock", **{k: _node(getattr(mod, k), f"{prefix}{k}.") for k in ("c1", "b1", "c2", "b2", "short")}}
    if name == "ResNetSmall":
        return {"op": "resnet", **{k: _node(getattr(mod, k), f"{prefix}{k}.") for k in ("stem", "blocks", "head")}}
    if name == "TinyAttention":
        node: Spec = {"op": "attention", "heads": mod.heads, "tok": prefix + "tok.weight", "pos": prefix + "pos.weight"}
        for k in ("q", "k", "v", "o", "ff1", "ff2", "head"):
            node[k] = _node(getattr(mod, k), f"{prefix}{k}.")
        for k in ("ln1", "ln2", "ln3"):
            ln = getattr(mod, k)
            node[k] = {"w": f"{prefix}{k}.weight", "b": f"{prefix}{k}.bias", "eps": float(ln.eps)}
        return node
    raise NotImplementedError(f"{prefix or 'model'}: {name} is not ported (benchmarks/family_port.py)")


# -- the exchange file ------------------------------------------------------------------------
def save_npz(path: str, name: str, spec: Spec, params: dict, consts: dict, x=None) -> None:
    """Write spec (JSON), parameters (``p:<name>``), constants (``c:<name>``) and, when given,
    the inputs ``x`` as numpy arrays (torch tensors are detached and copied)."""
    arrays = {f"p:{k}": _np(v) for k, v in params.items()}
    arrays.update({f"c:{k}": _np(v) for k, v in consts.items()})
    if x is not None:
        arrays["x"] = _np(x)
    np.savez(path, spec=np.array(json.dumps({"name": name, "spec": spec})), **arrays)


def load_npz(path: str) -> tuple[str, Spec, dict, dict, np.ndarray | None]:
    """(name, spec, params, consts, x or None) as numpy arrays."""
    with np.load(path) as data:
        meta = json.loads(str(data["spec"]))
        params = {k[2:]: data[k] for k in data.files if k.startswith("p:")}
        consts = {k[2:]: data[k] for k in data.files if k.startswith("c:")}
        x = data["x"] if "x" in data.files else None
    return meta["name"], meta["spec"], params, consts, x


def _np(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
