"""Generic per-sample Jacobians with ``torch.func`` (works for any functional model).

This is the reference path: ``vmap(jacrev(f))`` over samples, where ``f`` is one sample's
forward through ``functional_call``; ``jacrev`` shares one forward among the C outputs.
Where ``vmap`` cannot batch the model's forward (recurrent modules, see
``UNBATCHABLE_TYPES``, or any module whose vmap fails), :class:`SampleJacobians` takes an
exact loop over the samples with plain autograd instead, and says so in the log.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ..utils import get_logger
from .forward import (
    as_logits,
    checked_forward,
    eval_mode,
    model_device,
    parameter_groups,
    trainable_parameters,
)
from .inputs import as_input_tensor, cast_input, iter_batches

__all__ = [
    "jacobian", "parameter_groups", "per_sample_jacobians", "functional_state", "class_scale",
    "SampleJacobians", "UNBATCHABLE_TYPES", "unbatchable_module",
]

_LOG = get_logger(__name__)

# Module types whose per-sample forward torch.func cannot vmap. aten's RNN ops have no vmap
# batching rule, so they run their composite cells (RNN.cpp), which add the input's gates in
# place to the hidden state's: linear_hh(h).add_(linear_ih(x)). The default zero initial
# state h is created without vmap's batch dimension, so that in-place add fails ("output
# with shape [1, H] doesn't match the broadcast shape [B, 1, H]"; nn.RNN / GRU / LSTM and
# the *Cell modules, torch 2.x; an LSTM escapes only on CPU float32 through oneDNN's kernel,
# where vmap loops over the samples anyway). Models containing them take the per-sample loop.
UNBATCHABLE_TYPES: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)


def functional_state(
    model: nn.Module, device: torch.device | str, dtype: torch.dtype,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Detached copies of the trainable parameters and of everything else (frozen parameters,
    buffers) on ``device``; floating tensors in ``dtype``, integer buffers keep theirs.

    Kernels and attribution gradients are computed with these (through ``functional_call``),
    so the user's model is never moved or cast. Frozen parameters travel with the buffers:
    they shape the function but are not differentiated. With ``state_dict`` (a checkpoint of
    the same architecture) the values come from it instead of the model's own (the model's
    non-persistent buffers, absent from a state dict, are then left to the model).

    Returns:
        ``(params, others)``: ``{name: tensor}`` dicts; ``params`` in ``named_parameters()``
        order, as the per-sample gradients flatten them.
    """
    trainable = trainable_parameters(model)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    if state_dict is not None:
        missing = [n for n in trainable if n not in state_dict]
        if missing:
            raise KeyError(f"state_dict lacks parameters {missing}")
        params = {n: cast(state_dict[n]) for n in trainable}
        return params, {n: cast(t) for n, t in state_dict.items() if n not in trainable}
    params = {n: cast(p) for n, p in trainable.items()}
    frozen: dict[str, torch.Tensor] = {}
    for n, p in model.named_parameters():
        if n not in params:
            frozen[n] = cast(p)
    for n, b in model.named_buffers():
        frozen[n] = cast(b)
    return params, frozen


def class_scale(importance: Any, num_classes: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """Per-class multipliers sqrt(importance[c]) applied to g^c (None when no importance).

    ``importance`` is the already-exponentiated weight vector I_c^beta, so g^c is scaled by
    I_c^(beta/2) and every kernel entry ⟨g^c, g^c'⟩ picks up sqrt(I_c^beta I_c'^beta).
    """
    if importance is None:
        return None
    imp = torch.as_tensor(importance, dtype=torch.float64).flatten()
    if imp.numel() != num_classes:
        raise ValueError(f"importance has {imp.numel()} entries but the model has C={num_classes} outputs")
    if not torch.isfinite(imp).all() or (imp < 0).any():
        raise ValueError("importance weights must be finite and non-negative")
    return imp.sqrt().to(device=device, dtype=dtype)


def per_sample_jacobians(
    model: nn.Module,
    xb: torch.Tensor,
    params: dict[str, torch.Tensor],
    others: dict[str, torch.Tensor],
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Jacobians of the (C,) logits of every sample in ``xb`` w.r.t. ``params[names]``.

    Returns ``{name: (B, C, *param.shape)}``. Parameters not in ``names`` are held fixed.
    The caller has put the model in eval mode (samples must be independent). One-off form of
    :class:`SampleJacobians` (which keeps its vmap-or-loop decision across batches).
    """
    return SampleJacobians(model)(xb, params, others, names)


def unbatchable_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first ``(qualified name, module)`` of a type in ``UNBATCHABLE_TYPES`` (the root
    module is named ``""``), or None."""
    for name, mod in model.named_modules():
        if isinstance(mod, UNBATCHABLE_TYPES):
            return name, mod
    return None


def describe_module(name: str, mod: nn.Module) -> str:
    """``"GRU module 'rnn'"``, or for the root ``"the forward of GRUClassifier itself"``."""
    return f"{type(mod).__name__} module {name!r}" if name else f"the forward of {type(mod).__name__} itself"


class ModuleStack:
    """While active, the stack of modules whose forward is running (forward hooks on every
    submodule), so that an exception raised inside a forward can be pinned on the innermost
    module: ``innermost()`` after the exception. Empty when the error was raised outside any
    forward (in a backward pass)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[tuple[str, nn.Module]] = []
        self.handles: list = []

    def __enter__(self) -> "ModuleStack":
        for name, mod in self.model.named_modules():
            self.handles.append(mod.register_forward_pre_hook(self._push(name)))
            self.handles.append(mod.register_forward_hook(self._pop))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _push(self, name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple) -> None:
            self.stack.append((name, mod))
        return hook

    def _pop(self, mod: nn.Module, args: tuple, out: Any) -> None:
        # Returns None: a forward hook's return value would replace the module's output.
        if self.stack:
            self.stack.pop()

    def innermost(self) -> str:
        """The innermost running module as :func:`describe_module` words, or the backward."""
        if not self.stack:
            return "a backward pass"
        return describe_module(*self.stack[-1])


class SampleJacobians:
    """Per-sample Jacobians of a model's logits: ``vmap(jacrev)`` over the samples where
    torch.func can batch the model's forward, else an exact loop over the samples with plain
    autograd (one forward of one sample, one backward batched over the classes or, where that
    fails too, one per class).

    The choice is made once per instance (one kernel computation): up front for a model
    holding a module of a type in ``UNBATCHABLE_TYPES``, or on the first batch whose vmap
    raises; either way the log names the module type. A model that the loop cannot
    differentiate either is refused with a ValueError naming the module that failed.

    Args:
        model: the network, in eval mode while the instance is used.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.looped = False
        self.vmap_ok = False  # vmap has worked on one batch: no more failure bookkeeping
        self.batched_classes = True  # the loop's backward batched over the classes works
        self.why = ""  # why vmap is not used, for the refusal message
        found = unbatchable_module(model)
        if found is not None:
            self.looped = True
            self.why = f"torch.func.vmap cannot batch {describe_module(*found)}"
            _LOG.info(
                "%s (model %s); its per-sample Jacobians are computed one sample at a time with "
                "autograd (exact, slower)", self.why, type(model).__name__,
            )

    def __call__(
        self,
        xb: torch.Tensor,
        params: dict[str, torch.Tensor],
        others: dict[str, torch.Tensor],
        names: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{name: (B, C, *param.shape)}`` for the samples ``xb`` (B, ...), w.r.t.
        ``params[names]`` (default: all); the other parameters and ``others`` held fixed."""
        names = list(params) if names is None else list(names)
        wrt = {n: params[n] for n in names}
        fixed = {n: t for n, t in params.items() if n not in wrt}
        fixed.update(others)
        if not self.looped:
            if self.vmap_ok:
                return self._vmapped(xb, wrt, fixed)
            stack = ModuleStack(self.model)
            try:
                with stack:
                    out = self._vmapped(xb, wrt, fixed)
                self.vmap_ok = True
                return out
            except torch.OutOfMemoryError:
                raise  # a smaller batch_size is the way out, not a slow loop
            except RuntimeError as err:  # functorch's errors (NotImplementedError included)
                self.looped, self.why = True, f"torch.func.vmap failed in {stack.innermost()}"
                _LOG.warning(
                    "%s of model %s (%s); its per-sample Jacobians are computed one sample at a time "
                    "with autograd (exact, slower)", self.why, type(self.model).__name__,
                    str(err).splitlines()[0][:200],
                )
        try:
            return self._looped(xb, wrt, fixed)
        except (RuntimeError, ValueError, TypeError) as err:
            raise self._refusal(xb, wrt, fixed, err) from err

    def _vmapped(self, xb: torch.Tensor, wrt: dict, fixed: dict) -> dict[str, torch.Tensor]:
        model = self.model

        def one_sample(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
            out = functional_call(model, {**fixed, **p}, (xi.unsqueeze(0),))
            return as_logits(out, 1).squeeze(0)

        return vmap(jacrev(one_sample), in_dims=(None, 0))(wrt, xb)

    def _sample_logits(self, xi: torch.Tensor, leaves: dict, fixed: dict) -> torch.Tensor:
        with torch.enable_grad():
            return as_logits(functional_call(self.model, {**fixed, **leaves}, (xi,)), 1)[0]

    def _looped(self, xb: torch.Tensor, wrt: dict, fixed: dict) -> dict[str, torch.Tensor]:
        # Only wrt is differentiated: the fixed tensors are detached so no graph is built for them.
        fixed = {n: t.detach() for n, t in fixed.items()}
        rows: dict[str, list[torch.Tensor]] = {n: [] for n in wrt}
        for i in range(xb.shape[0]):
            leaves = {n: t.detach().requires_grad_(True) for n, t in wrt.items()}
            logits = self._sample_logits(xb[i : i + 1], leaves, fixed)
            for n, g in zip(leaves, self._class_grads(logits, list(leaves.values()))):
                rows[n].append(g)
        return {n: torch.stack(r) for n, r in rows.items()}

    def _class_grads(self, logits: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """d logits[c] / d t for every input t, as (C, *t.shape); zeros where t is unused."""
        C = logits.shape[0]
        grads = None
        if self.batched_classes:
            # One backward batched over the classes (vmap over the cotangents), as jacrev does.
            try:
                grads = torch.autograd.grad(
                    logits, inputs, grad_outputs=torch.eye(C, dtype=logits.dtype, device=logits.device),
                    retain_graph=True, allow_unused=True, is_grads_batched=True,
                )
            except RuntimeError:
                self.batched_classes = False
        if grads is None:
            per_class = [
                torch.autograd.grad(logits[c], inputs, retain_graph=True, allow_unused=True) for c in range(C)
            ]
            grads = [
                None if per_class[0][k] is None else torch.stack([g[k] for g in per_class])
                for k in range(len(inputs))
            ]
        return [
            t.new_zeros((C,) + t.shape) if g is None else g.detach() for g, t in zip(grads, inputs)
        ]

    def _refusal(self, xb: torch.Tensor, wrt: dict, fixed: dict, err: Exception) -> ValueError:
        """A clear error for a model neither vmap nor the autograd loop can differentiate,
        naming the module the loop failed in (found by rerunning one sample under a
        :class:`ModuleStack`)."""
        stack = ModuleStack(self.model)
        try:
            with stack:
                leaves = {n: t.detach().requires_grad_(True) for n, t in wrt.items()}
                logits = self._sample_logits(xb[:1], leaves, {n: t.detach() for n, t in fixed.items()})
                self.batched_classes = False
                self._class_grads(logits, list(leaves.values()))
            where = "an unknown place (it passed when rerun on one sample)"
        except (RuntimeError, ValueError, TypeError):
            where = stack.innermost()
        what = "that operation" if where == "a backward pass" else "that module"
        return ValueError(
            f"per-sample gradients of model {type(self.model).__name__} cannot be computed: {self.why}, and "
            f"the exact per-sample autograd loop failed in {where}: {str(err).rstrip('.')}. Make {what} "
            "differentiable by torch.autograd, or freeze the parameters that reach the logits only through it "
            "(requires_grad_(False)) to leave them out of the kernel"
        )


def _validate_batch(model: nn.Module, xb: torch.Tensor, params: dict, others: dict) -> int:
    """A plain forward gives clear shape/finiteness errors (vmap's would be cryptic); returns C."""
    with torch.no_grad():
        logits = checked_forward(model, xb, lambda t: functional_call(model, {**others, **params}, (t,)))
    return logits.shape[1]


def jacobian(
    model: nn.Module,
    x: Any,
    *,
    importance: Any = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    layerwise: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Per-sample, per-class Jacobians g^c(x_n) = dF^c(x_n)/dtheta.

    Args:
        model: network whose output on a batch is (N, C) logits (a (N,) output means C = 1),
            or a dict / object holding them as ``logits`` (see :func:`.forward.as_logits`).
        x: inputs as a Tensor (N, ...), ndarray, Dataset or DataLoader (first tuple element).
        importance: optional length-C vector of already-exponentiated class weights I_c^beta;
            g^c is multiplied by sqrt(importance[c]) = I_c^(beta/2).
        batch_size: samples per vmap'd batch (or per batch of the per-sample loop).
        device: where to compute; None means the model's device. The model is not moved.
        dtype: computation dtype (parameters, buffers and floating inputs are cast).
        layerwise: return ``{group: (N, C, P_group)}`` with groups from :func:`parameter_groups`.

    Returns:
        (N, C, P) tensor on ``device``; parameters in ``model.named_parameters()`` order
        (trainable ones only), each flattened row-major. The model is evaluated in eval mode
        and its modes are restored afterwards.
    """
    x = as_input_tensor(x, "x")
    dev = model_device(model) if device is None else torch.device(device)
    params, others = functional_state(model, dev, dtype)
    groups = parameter_groups(model)
    chunks: list[torch.Tensor] = []
    scale = None
    jacobians = SampleJacobians(model)
    with eval_mode(model):
        for _, xb in iter_batches(x, batch_size):
            xb = cast_input(xb, dev, dtype)
            num_classes = _validate_batch(model, xb, params, others)
            if scale is None and importance is not None:
                scale = class_scale(importance, num_classes, dev, dtype)
            jac = jacobians(xb, params, others)
            flat = torch.cat([jac[n].reshape(xb.shape[0], num_classes, -1) for n in params], dim=2)
            if scale is not None:
                flat = flat * scale.view(1, -1, 1)
            chunks.append(flat)
    full = torch.cat(chunks, dim=0)
    if not layerwise:
        return full
    sizes = {n: p.numel() for n, p in params.items()}
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for group, names in groups.items():
        width = sum(sizes[n] for n in names)
        out[group] = full[:, :, offset : offset + width]
        offset += width
    return out
