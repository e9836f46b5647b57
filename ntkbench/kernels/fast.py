"""Per-sample gradient representations from forward hooks and batched backward passes.

For the common layers the per-sample gradient factorises, so it is never materialised:

* Linear / Conv1d / Conv2d: g = sum_l a_l (x) delta_l, a = input (unfolded patches for conv,
  plus a constant 1 for the bias), delta = gradient of the logit at the layer output.
* Embedding: the same with a = one-hot(token).
* LayerNorm / GroupNorm / BatchNorm (eval): g_weight = sum_l xhat_l * delta_l,
  g_bias = sum_l delta_l; these have few parameters, so they are materialised (cheap).
* Grouped / depthwise Conv1d / Conv2d (groups > 1): materialised per group from the patches
  and delta (see :func:`_grouped_conv_grad`).

Samples are independent in eval mode, so one backward of sum_n F^c(x_n) (batched over the
classes) yields every sample's delta at once. Parameters of any other module (or modules used
in ways hooks cannot see) go through the generic path (:class:`.generic.SampleJacobians`:
``torch.func`` where it can batch the model, an exact per-sample loop elsewhere, e.g. RNNs).
On the first batch the factorised gradients, summed over the samples with distinct weights
(so that a gradient attributed to the wrong sample is caught too), are checked against
autograd's parameter gradients; a module that fails (e.g. its weight is also used
functionally elsewhere) falls back to the generic path. A Linear/Embedding module whose
input lacks the batch dimension (a positional embedding of arange(T), broadcast over the
batch) gets a per-sample copy of its output, so that it stays on the fast path.
"""
from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..utils import get_logger
from .forward import checked_forward, parameter_groups
from .generic import SampleJacobians
from .reps import DenseGrad, GradRep, OuterGrad, map_classes

__all__ = ["GradientEngine", "IMPLS", "Impl"]


class Impl(str, enum.Enum):
    """How per-sample gradients are computed (``impl=`` of the kernel functions), in the spirit
    of neural-tangents' ``NtkImplementation``. Values never change a kernel beyond rounding.

    - ``AUTO`` ("auto", the default): the factorised fast path for Linear, Conv1d/2d,
      Embedding and the norm layers, verified on the first batch against autograd; a module
      that fails the check, and every other module, goes through torch.func.
    - ``FAST`` ("fast"): the same, but a failed verification is an error instead of a
      fallback (to make sure a model is on the fast path).
    - ``GENERIC`` ("generic"): torch.func Jacobians for every parameter (vmap, or an exact
      per-sample loop for modules vmap cannot batch, e.g. RNNs).

    Being a ``str`` enum, ``Impl.FAST == "fast"``: either form is accepted.
    """

    AUTO = "auto"
    FAST = "fast"
    GENERIC = "generic"

    @classmethod
    def parse(cls, value: "Impl | str") -> "Impl":
        """``value`` as an :class:`Impl`; a clear error naming the valid values otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown impl {value!r}; valid: {', '.join(IMPLS)}") from None


IMPLS = tuple(i.value for i in Impl)
_LOG = get_logger(__name__)
# Samples of the first batch on which the fast path is cross-checked (GradientEngine._reference).
# Prime, so that it is unlikely to equal a sequence length (an unbatched input of that length
# would look batched).
_VERIFY_SAMPLES = 13

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORMS = (nn.LayerNorm, nn.GroupNorm) + _BATCH_NORMS
_FAST_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding) + _NORMS


def _fast_eligible(module: nn.Module) -> bool:
    """Exact types only: subclasses may override forward (e.g. quantisable Linear)."""
    kind = type(module)
    if kind not in _FAST_TYPES or getattr(module, "weight", None) is None:
        return False
    if kind in (nn.Conv1d, nn.Conv2d):  # groups > 1 too: materialised by _grouped_conv_grad
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    if kind is nn.Embedding:
        return module.max_norm is None and not module.scale_grad_by_freq
    if kind in _BATCH_NORMS:
        return module.track_running_stats and module.running_mean is not None
    return True


@dataclass
class _Call:
    """What one forward call of a fast module left behind."""

    out: torch.Tensor
    feat: torch.Tensor  # a (B, L, din) | idx (B, L) | xhat (same shape as input)
    mask: torch.Tensor | None = None  # embedding padding positions to zero


@dataclass
class _FastModule:
    name: str
    module: nn.Module
    params: list[str]  # qualified parameter names, weight first
    calls: list[_Call] = field(default_factory=list)
    # Whether the module's input lacks the batch dimension (e.g. a positional embedding of
    # arange(T) broadcast over the batch later); decided once, at verification (see
    # GradientEngine._reference), or else by the module's first hooked call.
    unbatched: bool | None = None


@dataclass
class _Reference:
    """The model's own results on the reference samples (see GradientEngine._reference)."""

    logits: torch.Tensor  # (R, C)
    expected: dict[str, torch.Tensor | None]  # parameter -> autograd's gradient of the weighted sum
    weights: torch.Tensor  # (R,) sample weights
    class_weights: torch.Tensor  # (C',) class weights
    probed: set[str]  # modules whose batchedness the reference passes decided


def _linear_inputs(mod: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    a = x.detach().reshape(x.shape[0], -1, x.shape[-1])
    if mod.bias is not None:
        a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
    return a


def _patches(x: torch.Tensor, kernel, stride, padding, dilation, ones_column: bool = False) -> torch.Tensor:
    """Conv patches (B, L, Cin * prod(kernel)) in the weight's (Cin, k...) column order,
    with ``ones_column`` followed by a constant 1 (the bias's input).

    One strided copy per kernel offset (much faster on CPU than ``F.unfold``), in whichever
    order keeps both sides of the copy running along the input's contiguous dimension:
    channels-first inputs fill (B, Cin, k, L) storage (each tap moves whole output rows) and
    come back as a transposed view; channels-last inputs fill (B, L, Cin, k) storage (each tap
    moves (B, out..., Cin) slabs). Filling (B, L, ...) from a channels-first input strides
    both sides: 21 ms against 3.4 ms for a ResNet's 16-channel 3x3 conv on 32x32 inputs at
    B = 50. The consumers take either layout (batched matmuls accept transposed operands).
    """
    dims = len(kernel)
    pad = []
    for p in reversed(padding):
        pad += [p, p]
    x = F.pad(x, pad) if any(padding) else x
    B, Cin = x.shape[:2]
    sizes = [(x.shape[2 + i] - (kernel[i] - 1) * dilation[i] - 1) // stride[i] + 1 for i in range(dims)]
    taps = math.prod(kernel)
    width = Cin * taps
    offsets = itertools.product(*(range(k) for k in kernel))
    windows = [tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(offset, dilation, stride, sizes))
               for offset in offsets]
    if x.stride(1) > x.stride(-1) or Cin == 1:  # channels first
        out = x.new_empty((B, width + int(ones_column), math.prod(sizes)))
        cols = out[:, :width].view(B, Cin, taps, *sizes)
        for tap, window in enumerate(windows):
            cols[:, :, tap].copy_(x[(slice(None), slice(None)) + window])
        if ones_column:
            out[:, -1] = 1.0
        return out.transpose(1, 2)
    out = x.new_empty((B, math.prod(sizes), width + int(ones_column)))
    cols = out[..., :width].view(B, *sizes, Cin, taps)
    x = x.movedim(1, -1)  # (B, spatial..., Cin): a view
    for tap, window in enumerate(windows):
        cols[..., tap].copy_(x[(slice(None),) + window])
    if ones_column:
        out[..., -1] = 1.0
    return out


def _conv_inputs(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Grouped convs take their bias gradient from delta alone (_grouped_conv_grad): no ones column.
    ones = mod.bias is not None and mod.groups == 1
    return _patches(x.detach(), mod.kernel_size, mod.stride, mod.padding, mod.dilation, ones)


def _is_grouped_conv(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups > 1


def _grouped_conv_grad(mod: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Materialised per-sample gradients (B, C, p) of a grouped conv, [weight, bias] layout.

    a: patches (B, L, Cin * prod(k)) without a ones column; delta: (C, B, Cout, *out_spatial).
    Group g's weight gradient is sum_l a_l[g-th Cin/G block] (x) delta_l[g-th Cout/G block],
    one einsum over all groups. Why materialised rather than factorised: OuterGrad needs one
    input vector a_l shared by every output channel, which a grouped conv lacks (its gradient
    is block diagonal in (out, in) channels). Materialising is exact and cheap where grouped
    convs occur: a depthwise conv (MobileNetV2) has only Cout * prod(k) (e.g. 9 Cout) weights,
    far fewer than the L (din + C dout) numbers per sample of a factorised form, so the
    DenseGrad contraction is also the cheaper one (as for the norms).
    """
    G = mod.groups
    C, B, Cout = delta.shape[:3]
    L = a.shape[1]
    d = delta.reshape(C, B, G, Cout // G, L)
    g = torch.einsum("cbgol,blgi->bcgoi", d, a.reshape(B, L, G, -1)).reshape(B, C, -1)
    if mod.bias is None:
        return g
    return torch.cat([g, d.sum(-1).reshape(C, B, Cout).transpose(0, 1)], dim=2)


def _affine_batch_norm(mod: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """An eval-mode BatchNorm's forward as the per-channel affine map it is, x * s + t.

    Its backward, run once per class, is then one multiplication by s: the native eval-mode
    batch-norm backward took 1.4 ms per call on a (50, 8, 28, 28) input (a fifth of the
    kernel's time on cnn-bn-pool-8-16 at N = 50). The parameters are read at call time, so
    under functional_call they are the engine's tensors, and the weight and bias gradients
    of the autograd cross-check flow through s and t.
    """
    def forward(x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = mod.weight * torch.rsqrt(mod.running_var + mod.eps)
        shift = mod.bias - mod.running_mean * scale
        return torch.addcmul(shift.view(shape), x, scale.view(shape))

    return forward


def _norm_inputs(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if isinstance(mod, nn.LayerNorm):
        return F.layer_norm(x, mod.normalized_shape, None, None, mod.eps)
    if isinstance(mod, nn.GroupNorm):
        return F.group_norm(x, mod.num_groups, None, None, mod.eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mod.running_mean.view(shape)) / torch.sqrt(mod.running_var.view(shape) + mod.eps)


def _norm_grad(mod: nn.Module, delta: torch.Tensor, xhat: torch.Tensor, buf: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample gradients (C, B, p) of a norm layer's [weight | bias], from its output
    gradients ``delta`` (C, B, *shape) and normalised inputs ``xhat`` (B, *shape): the
    products summed over positions (channel norms: every dim after the channel; LayerNorm:
    every dim before the normalised ones). Reduces over those dims in place, so a
    channels-last ``delta`` is never copied to another layout. ``buf``, shaped like
    ``delta``, takes the elementwise products (a sink reuses it for every class)."""
    C, B = delta.shape[:2]
    if isinstance(mod, nn.LayerNorm):
        dims = tuple(range(2, delta.dim() - len(mod.normalized_shape)))
    else:
        dims = tuple(range(3, delta.dim()))
    # sum over an empty dim list would reduce over every dim
    prod = torch.mul(delta, xhat, out=buf) if buf is not None else delta * xhat
    prod = prod.sum(dims) if dims else prod
    parts = [prod.reshape(C, B, -1)]
    if getattr(mod, "bias", None) is not None:
        parts.append((delta.sum(dims) if dims else delta).reshape(C, B, -1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _prefer_dense(L: int, din: int, dout: int, C: int) -> bool:
    """Whether a layer's per-sample gradients are cheaper to contract materialised.

    Per pair of samples the factorised form costs L^2 (din + c dout) against c din dout for
    the materialised one (c = C for trntk, C^2 for entk); materialise when both kinds agree.
    For convolutions (L = output positions) this is almost always the case, and then
    materialising straight from the backward's layout avoids copying the large (C, B, dout, L)
    output gradients around.
    """
    return all(L * L * (din + c * dout) > 2 * c * din * dout for c in (C, C * C))


class _ClassSink:
    """Per-sample gradients of one module, formed class by class as the output gradients come
    (:meth:`GradientEngine._class_grads`) into class-major storage ``res`` (C, B, ...). A
    class whose output gradient is None (the module does not reach that logit) stays zero."""

    def __init__(self, res: torch.Tensor) -> None:
        self.res = res
        self.unset = set(range(res.shape[0]))

    def add(self, c: int, delta: torch.Tensor | None) -> None:
        if delta is None:
            return
        self._write(c, delta)
        self.unset.discard(c)

    def _write(self, c: int, delta: torch.Tensor) -> None:
        raise NotImplementedError

    def _filled(self) -> torch.Tensor:
        for c in self.unset:
            self.res[c].zero_()
        return self.res


class _ConvSink(_ClassSink):
    """Materialises a conv's per-sample gradients class by class from the output gradients
    (B, dout, L...) and the patches a (B, L, din): one bmm per class straight into
    class-major (C, B, dout, din) storage, nothing copied (see :class:`DenseGrad`). With a
    bias, a's last column is the constant 1, so each block is the augmented [W | b]. When
    din < dout the blocks are computed transposed, a^T delta^T: these small matmuls are
    faster with the wider side last (2.5x for a 1->16-channel 3x3 conv on 28x28 inputs).
    ``transposed`` overrides that choice (Linear layers over positions, whose output
    gradients come as (B, L, dout): transposed, both operands are views in that layout).

    Stacking the classes into one taller bmm per sample was measured and rejected: the
    product itself is 2-3x faster, but copying each class's output gradient into the stacked
    buffer costs as much (narrow convs make these products memory-bound), so the sink was
    no faster on the family's narrow CNNs (0.91 s against 0.84 s, cnn-narrow, N = 500).
    """

    def __init__(self, a: torch.Tensor, C: int, dout: int, layout: list, has_bias: bool,
                 transposed: bool | None = None) -> None:
        self.a, self.layout, self.has_bias = a, layout, has_bias
        B, _, din = a.shape
        self.transposed = din < dout if transposed is None else transposed
        shape = (C, B, din, dout) if self.transposed else (C, B, dout, din)
        super().__init__(torch.empty(shape, dtype=a.dtype, device=a.device))

    def _write(self, c: int, delta: torch.Tensor) -> None:
        d = delta.reshape(delta.shape[0], delta.shape[1], -1)  # (B, dout, L)
        if self.transposed:
            torch.bmm(self.a.transpose(1, 2), d.transpose(1, 2), out=self.res[c])
        else:
            torch.bmm(d, self.a, out=self.res[c])

    def result(self) -> DenseGrad:
        res = self._filled()
        C, B = res.shape[:2]
        g = res.view(C, B, -1).transpose(0, 1)
        return DenseGrad(g, self.layout, augmented=self.has_bias, transposed=self.transposed)


class _NormSink(_ClassSink):
    """A norm layer's per-sample [weight | bias] gradients, class by class as the output
    gradients come, into class-major (C, B, p) storage: the classes' output gradients (as
    large as the layer's activations, each) are never stacked, and the products are never
    formed for all classes at once (in a small ResNet these copies took 15% of the time)."""

    def __init__(self, mod: nn.Module, xhat: torch.Tensor, C: int, layout: list) -> None:
        self.mod, self.xhat, self.layout = mod, xhat, layout
        self.buf: torch.Tensor | None = None
        p = sum(math.prod(shape) for _, shape in layout)
        super().__init__(torch.empty((C, xhat.shape[0], p), dtype=xhat.dtype, device=xhat.device))

    def _write(self, c: int, delta: torch.Tensor) -> None:
        delta = delta.unsqueeze(0)
        if self.buf is None or self.buf.shape != delta.shape:
            # One products buffer for all classes: a fresh (activation-sized) temporary per
            # class and layer cost 5x the multiplication itself in page faults (ResNet, N = 50).
            self.buf = torch.empty_like(delta)
        self.res[c] = _norm_grad(self.mod, delta, self.xhat, self.buf)[0]  # (B, p): small

    def result(self) -> DenseGrad:
        return DenseGrad(self._filled().transpose(0, 1), self.layout)


class GradientEngine:
    """Per-group gradient representations of sample batches, fast where possible: the
    :class:`ntkbench.kernels.engine.FeatureSource` of the exact gradient kernels.

    Args:
        model: the network (already in eval mode while the engine is used).
        params: the trainable tensors of the functional state from
            :func:`generic.functional_state`.
        others: the rest of that functional state (frozen parameters and buffers).
        impl: "auto" (factorised where supported, verified, generic elsewhere), "fast" (same,
            but a failed verification is an error) or "generic" (torch.func only).
        mix: optional (C, C') class map applied to the gradients (importance, pNTK sum).
    """

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, torch.Tensor],
        others: dict[str, torch.Tensor],
        impl: Impl | str = Impl.AUTO,
        mix: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.params = {n: p.requires_grad_(True) for n, p in params.items()}
        self.others = others
        self.impl = Impl.parse(impl)
        self.mix = mix
        self.groups = parameter_groups(model)
        self.group_of = {p: g for g, names in self.groups.items() for p in names}
        self.fast: dict[str, _FastModule] = {}
        if self.impl != Impl.GENERIC:
            self._plan_fast_modules()
        self._verified = self.impl == Impl.GENERIC
        self._batched_backward = True
        self._batch = 0  # samples in the batch being forwarded (the hooks compare against it)
        self._expand_unbatched = True  # per-sample copies of unbatched outputs (see _hook)
        self._last_logits: torch.Tensor | None = None
        # Per-sample Jacobians of the fallback parameters, made on first use (so that its
        # vmap-or-loop decision, and its log note, only concern models that need it).
        self._jacobians: SampleJacobians | None = None
        # vmap has no batched convolution backward (it loops over the classes and stacks), so
        # with convolutions a plain loop over classes is faster, and its per-class output
        # gradients feed the conv gradient materialisation without any stacking copy.
        self._class_loop = any(isinstance(fm.module, (nn.Conv1d, nn.Conv2d)) for fm in self.fast.values())
        # Conv outputs keep the model's own memory layout. Handing them on in channels-last
        # (oneDNN's conv backward is 5-30% faster there on the family's CNNs) was removed: in
        # torch 2.13.0 that mix of layouts corrupted the heap at 2 threads in a ResNet18 on
        # 28x28 inputs (free(): invalid next size; gone with torch.backends.mkldnn off or with
        # one thread). tests/test_kernels.py::test_resnet_kernel_two_threads guards it.

    # -- planning ---------------------------------------------------------------------------
    def _plan_fast_modules(self) -> None:
        owners: dict[int, int] = {}
        for mod in self.model.modules():
            for p in mod._parameters.values():
                if p is not None:
                    owners[id(p)] = owners.get(id(p), 0) + 1
        for name, mod in self.model.named_modules():
            if not name or not _fast_eligible(mod):
                continue
            direct = [(f"{name}.{leaf}", p) for leaf, p in mod._parameters.items() if p is not None]
            # Every direct parameter must be trainable, unshared, and in this module's group.
            if not all(qn in self.params and owners[id(p)] == 1 for qn, p in direct):
                continue
            if set(self.groups.get(name, [])) != {qn for qn, _ in direct}:
                continue
            names = [f"{name}.weight"] + ([f"{name}.bias"] if getattr(mod, "bias", None) is not None else [])
            self.fast[name] = _FastModule(name, mod, names)

    @property
    def fallback_names(self) -> list[str]:
        covered = {p for fm in self.fast.values() for p in fm.params}
        return [n for n in self.params if n not in covered]

    # -- forward with hooks -----------------------------------------------------------------
    def _hook(self, fm: _FastModule) -> Callable:
        def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor | None:
            x = inputs[0]
            B = self._batch
            if fm.unbatched is None:
                fm.unbatched = x.dim() == 0 or x.shape[0] != B or out.dim() == 0 or out.shape[0] != B
            if fm.unbatched:
                # An input without the batch dimension (a positional embedding of arange(T),
                # broadcast over the batch downstream): each sample gets its own copy of the
                # output, so that the backward yields per-sample output gradients. Elsewhere
                # (or if that changes the forward, see _verify) the module records no call
                # and goes to the generic path.
                if not (self._expand_unbatched and isinstance(mod, (nn.Linear, nn.Embedding))):
                    return None
                if x.dim() > 0 and x.shape[0] == 1 and out.shape[0] == 1:  # (1, T) ids: broadcast dim 0
                    x, out = x.expand((B,) + x.shape[1:]), out.expand((B,) + out.shape[1:])
                else:  # (T,) ids: a new leading dim
                    x, out = x.unsqueeze(0).expand((B,) + x.shape), out.unsqueeze(0).expand((B,) + out.shape)
            if isinstance(mod, nn.Linear):
                feat, mask = _linear_inputs(mod, x), None
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                feat, mask = _conv_inputs(mod, x), None
            elif isinstance(mod, nn.Embedding):
                feat = x.reshape(x.shape[0], -1)
                mask = None if mod.padding_idx is None else feat == mod.padding_idx
            else:
                feat, mask = _norm_inputs(mod, x), None
            fm.calls.append(_Call(out, feat, mask))
            # Later in-place ops (ReLU(inplace=True)) must not rewrite the tensor whose
            # gradient we ask for, so downstream code gets a copy.
            return out.clone()

        return hook

    def _forward(self, xb: torch.Tensor) -> torch.Tensor:
        self._batch = xb.shape[0]
        for fm in self.fast.values():
            fm.calls.clear()
        handles = [fm.module.register_forward_hook(self._hook(fm)) for fm in self.fast.values()]
        affine = [fm.module for fm in self.fast.values()
                  if isinstance(fm.module, _BATCH_NORMS) and not fm.module.training]
        for mod in affine:
            mod.forward = _affine_batch_norm(mod)  # an instance attribute: shadows the class's
        try:
            return checked_forward(self.model, xb, self._call)
        finally:
            for h in handles:
                h.remove()
            for mod in affine:
                del mod.forward

    def _call(self, x: torch.Tensor):
        """The model on ``x`` with the engine's functional state (parameters and buffers)."""
        return functional_call(self.model, {**self.others, **self.params}, (x,))

    def _class_grads(
        self, logits: torch.Tensor, tensors: list[torch.Tensor], sinks: dict[int, _ClassSink] | None = None,
    ) -> list:
        """d(sum_b sum_c mix[c,c'] F^c_b)/d t for every t, stacked over c' as (C', *t.shape).

        ``sinks`` (class loop only) consume the gradients of some tensors class by class as
        they come (their entries in the result are None), so that these never pile up.
        """
        B, C = logits.shape
        mix = self._class_mix(logits)
        seeds = mix.T.unsqueeze(1).expand(mix.shape[1], B, C)  # (C', B, C)
        # One vmap'd backward over the classes (measured faster than a loop over classes
        # for MLPs); a loop when some op's backward has no batching rule.
        if self._batched_backward and not self._class_loop:
            try:
                return list(torch.autograd.grad(
                    logits, tensors, grad_outputs=seeds.contiguous(), retain_graph=True,
                    allow_unused=True, is_grads_batched=True,
                ))
            except RuntimeError:
                self._batched_backward = False
        sinks = sinks or {}
        per_tensor: list[list] = [[] for _ in tensors]
        for c, seed in enumerate(seeds):
            grads = torch.autograd.grad(logits, tensors, grad_outputs=seed, retain_graph=True, allow_unused=True)
            for i, g in enumerate(grads):
                if i in sinks:
                    sinks[i].add(c, g)
                else:
                    per_tensor[i].append(g)
        return [
            None if i in sinks or per_tensor[i][0] is None else torch.stack(per_tensor[i])
            for i in range(len(tensors))
        ]

    def _class_mix(self, logits: torch.Tensor) -> torch.Tensor:
        """The (C, C') class mixing of the outputs differentiated (the identity unless ``mix``)."""
        C = logits.shape[1]
        return torch.eye(C, dtype=logits.dtype, device=logits.device) if self.mix is None else self.mix

    def _mixed_param_grads(self, logits: torch.Tensor, tensors: list[torch.Tensor], weights: torch.Tensor,
                           class_weights: torch.Tensor) -> list:
        """d(sum_b w_b sum_c' v_c' sum_c mix[c,c'] F^c_b)/d t for every t: autograd's side of the
        cross-check in one backward pass. Distinct sample weights w (B,) and class weights v (C',)
        make a gradient attributed to the wrong sample or class show, as a per-class check
        would, at 1/C' of its cost."""
        B, C = logits.shape
        seed = weights.view(B, 1) * (self._class_mix(logits) @ class_weights).view(1, C)
        return list(torch.autograd.grad(logits, tensors, grad_outputs=seed, allow_unused=True))

    def _layout(self, fm: _FastModule) -> list[tuple[str, tuple[int, ...]]]:
        return [(n, tuple(self.params[n].shape)) for n in fm.params]

    def _sinks(self, live: list[_FastModule], C: int) -> dict[int, _ClassSink]:
        """Sinks for the modules (one call each, class loop) whose materialised gradients are
        formed class by class: convs contracted materialised, and norm layers. Keyed by the
        position of their output among the tensors differentiated."""
        sinks: dict[int, _ClassSink] = {}
        if not self._class_loop:
            return sinks
        pos = 0
        for fm in live:
            mod, calls = fm.module, fm.calls
            if len(calls) == 1 and isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups == 1:
                a = calls[0].feat
                if _prefer_dense(a.shape[1], a.shape[-1], mod.out_channels, C):
                    sinks[pos] = _ConvSink(a, C, mod.out_channels, self._layout(fm), len(fm.params) > 1)
            elif len(calls) == 1 and isinstance(mod, _NORMS):
                sinks[pos] = _NormSink(mod, calls[0].feat, C, self._layout(fm))
            pos += len(calls)
        return sinks

    # -- building representations ----------------------------------------------------------
    def _module_rep(self, fm: _FastModule, deltas: list[torch.Tensor | None], B: int) -> GradRep:
        mod = fm.module
        Cp = self.mix.shape[1] if self.mix is not None else self._num_classes
        parts_a, parts_d, dense = [], [], None
        for call, delta in zip(fm.calls, deltas):
            if delta is None:  # output does not reach the logits: zero gradient
                delta = torch.zeros((Cp,) + call.out.shape, dtype=call.out.dtype, device=call.out.device)
            C = delta.shape[0]
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                d = delta.reshape(C, B, -1, delta.shape[-1]).permute(1, 0, 2, 3)
                if call.mask is not None:
                    d = d.masked_fill(call.mask.view(B, 1, -1, 1), 0.0)
                parts_a.append(call.feat)
                parts_d.append(d)
            elif _is_grouped_conv(mod):
                g = _grouped_conv_grad(mod, call.feat, delta)
                dense = g if dense is None else dense + g
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                d = delta.reshape(C, B, delta.shape[2], -1).permute(1, 0, 3, 2)
                parts_a.append(call.feat)
                parts_d.append(d)
            else:
                g = _norm_grad(mod, delta, call.feat).permute(1, 0, 2)
                dense = g if dense is None else dense + g
        if dense is not None:
            return DenseGrad(dense, self._layout(fm))
        weight = (fm.params[0], tuple(self.params[fm.params[0]].shape))
        bias = fm.params[1] if len(fm.params) > 1 else None
        # A module called several times contributes the sum over calls: stack positions.
        d = parts_d[0] if len(parts_d) == 1 else torch.cat(parts_d, dim=2)
        a = parts_a[0] if len(parts_a) == 1 else torch.cat(parts_a, dim=1)
        if isinstance(mod, nn.Embedding):
            return OuterGrad(d, None, a, mod.num_embeddings, weight, None, transposed=True)
        L, din, dout = a.shape[1], a.shape[-1], d.shape[-1]
        # Materialise where that is the cheaper contraction (Linear layers applied at many
        # positions, e.g. attention projections over a sequence): one bmm per class,
        # a^T (B, din, L) @ d^c (B, L, dout), into class-major [W | b]^T storage. Both operands
        # are views in the backward's own layout: no copy. The other orientation,
        # (d^c)^T a, was 1.5x slower on the attention member's q/k/v/o at N = 50, and
        # stacking the classes first (one bmm of (B, C dout, L) @ (B, L, din)) was slower
        # still, its transposing copy as costly as the products.
        if L > 1 and _prefer_dense(L, din, dout, d.shape[1]):
            sink = _ConvSink(a, d.shape[1], dout, self._layout(fm), bias is not None, transposed=True)
            for c in range(d.shape[1]):
                sink.add(c, d[:, c].transpose(1, 2))  # (B, dout, L): a view of (B, L, dout)
            return sink.result()
        return OuterGrad(d, a, None, din, weight, bias)

    def _fast_reps(self, xb: torch.Tensor) -> dict[str, GradRep]:
        """Representations of the fast modules' gradients for the samples in ``xb``."""
        logits = self._forward(xb)
        self._num_classes = logits.shape[1]
        live = [fm for fm in self.fast.values() if fm.calls]
        # A module whose hook never fired may still be used functionally: generic path.
        for fm in [fm for fm in self.fast.values() if not fm.calls]:
            del self.fast[fm.name]
        B = xb.shape[0]
        outs = [c.out for fm in live for c in fm.calls]
        Cp = self._class_mix(logits).shape[1]  # outputs differentiated
        sinks = self._sinks(live, Cp)
        grads = self._class_grads(logits, outs, sinks) if outs else []
        self._last_logits = logits.detach()
        reps: dict[str, GradRep] = {}
        pos = 0
        for fm in live:
            n = len(fm.calls)
            if pos in sinks:
                reps[fm.name] = sinks[pos].result()
            else:
                reps[fm.name] = self._module_rep(fm, grads[pos : pos + n], B)
            pos += n
        for fm in self.fast.values():
            fm.calls.clear()
        return reps

    def _failed_modules(self, reps: dict[str, GradRep], ref: "_Reference") -> list[str]:
        """The fast modules whose factorised gradients of the reference samples (the first
        rows of ``reps``), summed with the reference's weights, differ from autograd's."""
        failed = []
        R = ref.weights.shape[0]
        for name, rep in reps.items():
            got = _batch_sum(rep.rows(0, R), ref.weights, ref.class_weights)
            for pname in self.fast[name].params:
                mixed = got[pname]
                exp = ref.expected.get(pname)
                exp = torch.zeros_like(mixed) if exp is None else exp.reshape(mixed.shape)
                err = (mixed - exp).norm()
                tol = 1e-3 * exp.norm() + 1e-6 * math.sqrt(exp.numel())
                if not bool(err <= tol):
                    failed.append(name)
                    break
        return failed

    def _reference(self, xb: torch.Tensor) -> "_Reference":
        """What the fast path is checked against, from the model's own forward on the first
        R = min(B, 13) samples of ``xb``: its logits (the hooked forward must reproduce them),
        and autograd's parameter gradients of a *weighted* sum of them, sum_b w_b sum_c' v_c'
        sum_c mix[c, c'] F^c_b, which the factorised per-sample gradients must reproduce with
        the same weights (a plain sum would not show gradients attributed to the wrong sample
        or class). One forward and one backward on R samples: at N = 50 the check's passes
        over the whole batch were 12-20 % of the kernel's time.

        Also decides which fast modules get inputs without the batch dimension: those whose
        input's leading size does not follow the batch size over this forward and one more on
        a different number of samples (a single batch size cannot tell when it equals, e.g.,
        the sequence length). Modules not called here are decided by their first hooked call.
        """
        passes: list[dict[str, list]] = [{name: [] for name in self.fast}, {name: [] for name in self.fast}]

        def probe(fm: _FastModule) -> Callable:
            def hook(mod: nn.Module, inputs: tuple, out) -> None:
                x = inputs[0] if inputs else None
                passes[current][fm.name].append(x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else None)
            return hook

        ref = xb[:_VERIFY_SAMPLES]
        R = ref.shape[0]
        small = ref[:2] if R > 2 else torch.cat([ref, ref[:1]])
        handles = [fm.module.register_forward_hook(probe(fm)) for fm in self.fast.values()]
        probed = True
        try:
            current = 0
            plain = checked_forward(self.model, ref, self._call)  # model errors raise here, named
            current = 1
            try:
                with torch.no_grad():
                    self._call(small)
            except (RuntimeError, ValueError, IndexError, TypeError):
                probed = False  # the hooked forwards decide (and report any error)
        finally:
            for h in handles:
                h.remove()
        decided = set()
        for name, first in passes[0].items() if probed else ():
            if first:
                second = passes[1][name]
                self.fast[name].unbatched = len(first) != len(second) or any(
                    a is None or a != R or b != small.shape[0] for a, b in zip(first, second)
                )
                decided.add(name)
        weights = _verify_weights(R, plain.dtype, plain.device)
        class_weights = _verify_weights(self._class_mix(plain).shape[1], plain.dtype, plain.device)
        pnames = [p for fm in self.fast.values() for p in fm.params]
        grads = self._mixed_param_grads(plain, [self.params[p] for p in pnames], weights, class_weights)
        return _Reference(plain.detach(), dict(zip(pnames, grads)), weights, class_weights, decided)

    def _verify(self, xb: torch.Tensor) -> dict[str, GradRep]:
        """Cross-check the factorised gradients of the first samples of ``xb`` against
        autograd's parameter gradients (:meth:`_reference`: a forward and a backward on 13
        samples, once); modules that fail go to the generic path (or raise with
        ``impl="fast"``). Returns the checked representations of ``xb`` (of the modules that
        passed).

        The hooked forward must also give the model's own logits: per-sample copies of
        unbatched outputs may break a model (an error) or, in principle, change what it
        computes; then they are undone."""
        ref = self._reference(xb)
        plain = ref.logits
        while True:
            error = None
            for fm in self.fast.values():  # the others are decided afresh by each attempt's hooks
                if fm.name not in ref.probed:
                    fm.unbatched = None
            try:  # checked_forward reports model errors as ValueError
                reps = self._fast_reps(xb)
                hooked = self._last_logits[: plain.shape[0]]
                same = bool((hooked - plain).norm() <= 1e-4 * plain.norm() + 1e-6 * math.sqrt(plain.numel()))
            except (RuntimeError, ValueError) as err:
                error, same = err, False
            if same:
                failed = self._failed_modules(reps, ref)
                break
            if self._expand_unbatched and any(fm.unbatched for fm in self.fast.values()):
                self._expand_unbatched = False
                _LOG.debug("per-sample copies of unbatched outputs break the forward; generic path for those modules")
            elif error is not None:
                raise error
            else:
                failed, reps = list(self.fast), {}
                break
        self._verified = True
        if not failed:
            return reps
        msg = (
            f"factorised gradients of module(s) {failed} do not match autograd (their parameters "
            "are probably also used outside the module's own forward)"
        )
        if self.impl == Impl.FAST:
            raise RuntimeError(msg + "; use impl='auto' or 'generic'")
        _LOG.warning("%s; using the generic torch.func path for them", msg)
        for name in failed:
            del self.fast[name]
        return {name: rep for name, rep in reps.items() if name in self.fast}

    whole_input = False  # no per-call cost to amortise: batches of batch_size

    def reps(self, xb: torch.Tensor) -> dict[str, list[GradRep]]:
        """``{group: [representations]}`` of the gradients of the samples in ``xb``."""
        out: dict[str, list[GradRep]] = {}
        fast_reps = None
        if self.fast and not self._verified:
            fast_reps = self._verify(xb)  # the checked representations of this batch
        if self.fast:
            if fast_reps is None:
                fast_reps = self._fast_reps(xb)
            for name, rep in fast_reps.items():
                out.setdefault(name, []).append(rep)
        fallback = self.fallback_names
        if fallback:
            if self._jacobians is None:
                self._jacobians = SampleJacobians(self.model)
            jac = self._jacobians(xb, self.params, self.others, fallback)
            B = xb.shape[0]
            by_group: dict[str, list[str]] = {}
            for n in fallback:
                by_group.setdefault(self.group_of[n], []).append(n)
            for group, names in by_group.items():
                g = torch.cat([jac[n].reshape(B, jac[n].shape[1], -1) for n in names], dim=2)
                rep = DenseGrad(g.detach(), [(n, tuple(self.params[n].shape)) for n in names])
                out.setdefault(group, []).append(map_classes(rep, self.mix))
        if not self.fast and not fallback:
            raise RuntimeError("no parameters to differentiate")  # unreachable: checked earlier
        # Keep the model's group order so results are deterministic.
        return {g: out[g] for g in self.groups if g in out}


def _verify_weights(B: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Distinct, deterministic per-sample weights in [0.5, 1.5) for the verification."""
    return (torch.arange(B, dtype=torch.float64) * 0.6180339887498949 % 1.0 + 0.5).to(dtype=dtype, device=device)


def _batch_sum(rep: GradRep, w: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """sum_b w_b sum_c v_c g_b^c per parameter, shaped like the parameter: the factorised side
    of the autograd cross-check.

    The classes are mixed before any outer product: a (B, L, dout) mix of the output gradients,
    then one (din x B L) @ (B L x dout) product per layer. Summing per class first and mixing
    after formed C times the weight-sized products: 90 % of an MLP's kernel time at N = 50
    (mlp-d1-w512, 35 of 38 ms).
    """
    if isinstance(rep, DenseGrad):
        # Weighted sum in the stored order, then only the (p,) sum put in layout order: never
        # a copy of the (B, C, p) gradients (for a ResNet at N = 50, that copy was 40% of the
        # kernel's time).
        g = rep.g
        storage = g.transpose(0, 1)  # (C, B, p): rows of class-major storage (maybe a slice)
        if storage.stride(2) == 1 and storage.stride(1) == g.shape[2]:
            total = torch.bmm((v.view(-1, 1) * w.view(1, -1)).unsqueeze(1), storage).sum(0)
        elif g.is_contiguous():
            total = (w.view(-1, 1) * v.view(1, -1)).reshape(1, -1) @ g.reshape(-1, g.shape[2])
        else:
            total = torch.einsum("b,c,bcp->p", w, v, g).unsqueeze(0)
        total = DenseGrad(total.unsqueeze(0), rep.layout, rep.augmented, rep.transposed).canonical()[0, 0]
        out, offset = {}, 0
        for name, shape in rep.layout:
            size = math.prod(shape)
            out[name] = total[offset : offset + size].reshape(shape)
            offset += size
        return out
    B, _, L, dout = rep.d.shape
    wname, wshape = rep.weight
    d = torch.einsum("c,bclo->blo", v, rep.d) * w.view(B, 1, 1)  # (B, L, dout)
    if rep.idx is not None:
        table = torch.zeros(rep.din, dout, dtype=d.dtype, device=d.device)
        table.index_add_(0, rep.idx.reshape(-1), d.reshape(-1, dout))
        return {wname: table}
    full = d.reshape(B * L, dout).T @ rep.a.reshape(B * L, -1)  # (dout, din)
    out = {}
    if rep.bias is not None:
        out[wname] = full[:, :-1].reshape(wshape)
        out[rep.bias] = full[:, -1]
    else:
        out[wname] = full.reshape(wshape)
    return out
