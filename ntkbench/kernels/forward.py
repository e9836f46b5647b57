"""Model-side helpers shared by every kernel path: parameters, eval mode, checked forward."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Iterator

import torch
from torch import nn

from ..utils import resolve_device

__all__ = [
    "trainable_parameters",
    "parameter_groups",
    "model_device",
    "kernel_device",
    "eval_mode",
    "ACCEPTED_OUTPUTS",
    "as_logits",
    "checked_forward",
    "describe_output",
    "select_logits",
]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the eNTK is taken over: ``model.named_parameters()`` with requires_grad.

    Frozen parameters are not part of the trained theta, so they are left out (documented in
    :func:`ntkbench.kernels.jacobian`).
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            f"model {type(model).__name__} has no trainable parameters; the eNTK needs at least one"
        )
    return params


def parameter_groups(model: nn.Module) -> dict[str, list[str]]:
    """Group trainable parameters by the module that owns them.

    Returns ``{module qualified name: [parameter names]}`` in ``named_parameters()`` order.
    Parameters owned directly by the root module (``model.W``) have no module name of their
    own, so each forms a group named after the parameter itself.
    """
    groups: dict[str, list[str]] = {}
    for name in trainable_parameters(model):
        owner, _, _leaf = name.rpartition(".")
        key = owner if owner else name
        groups.setdefault(key, []).append(name)
    return groups


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameter-free model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def kernel_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device a kernel is computed on (``None``: the model's), checked to be usable.

    Raises ValueError naming the device instead of torch's low-level errors for an invalid
    name, CUDA / MPS requested where it is not available, a CUDA index that does not exist, or
    the ``meta`` device (which holds shapes, not values), and for a model whose parameters
    are on ``meta`` (built without weights).
    """
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(
            f"model {type(model).__name__} has parameters on the 'meta' device (no values), e.g. "
            f"{meta[0]!r}; load or initialise its weights before computing a kernel"
        )
    # A model's own device is usable; a requested one is checked like a config's device.
    return model_device(model) if device is None else resolve_device(device)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own flag afterwards.

    Eval mode makes batch-norm use running statistics, so samples in a batch are independent
    (a requirement for batched per-sample gradients) and dropout is off.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


# What a model's forward may return, for the refusal message.
ACCEPTED_OUTPUTS = (
    "a tensor of logits (N, C) or (N,), a dict (or other mapping, e.g. a Hugging Face ModelOutput) "
    "with a 'logits' tensor, an object with a .logits tensor attribute, or a 1-tuple holding the tensor"
)


def describe_output(out: Any) -> str:
    """Short words for what a forward returned: type, and shape(s) of the tensors in it."""
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        items = ", ".join(
            f"Tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in out[:4]
        )
        return f"a {type(out).__name__} of {len(out)} element(s) ({items}{', ...' if len(out) > 4 else ''})"
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {list(out)[:8]} and no 'logits' tensor"
    return f"an object of type {type(out).__name__}"


def select_logits(out: Any) -> torch.Tensor | None:
    """The logits tensor in a forward's output (see ``ACCEPTED_OUTPUTS``), or None.

    A tuple of several elements is ambiguous (which one holds the logits?) and gives None.
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0] if len(out) == 1 and isinstance(out[0], torch.Tensor) else None
    # Mapping before attributes: a Hugging Face ModelOutput is both, a plain dict only the first.
    found = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    return found if isinstance(found, torch.Tensor) else None


def as_logits(out: Any, batch: int) -> torch.Tensor:
    """Bring a model output to (B, C) logits; a (B,) output is a single logit (C = 1).

    ``out`` is whatever the forward returned: a tensor, a mapping with a ``'logits'`` entry,
    an object with a ``.logits`` attribute, or a 1-tuple of a tensor. Anything else is
    refused with a TypeError that says what was returned and what is accepted.
    """
    logits = select_logits(out)
    if logits is None:
        raise TypeError(f"model output must be {ACCEPTED_OUTPUTS}; got {describe_output(out)}")
    if logits.dim() == 1:
        logits = logits.unsqueeze(1)
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise ValueError(
            f"model output must be logits of shape (N, C) for N={batch} inputs, got {tuple(logits.shape)}"
        )
    return logits


def checked_forward(model: nn.Module, x: torch.Tensor, call=None) -> torch.Tensor:
    """Run ``call(x)`` (default ``model(x)``) on a batch ``x`` (B, ...) and return its (B, C)
    logits (see :func:`as_logits` for the outputs accepted), with clear errors.

    A shape mismatch deep inside the forward is re-raised naming the input shape, which is
    almost always the actual mistake.
    """
    call = model if call is None else call
    try:
        out = call(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        raise ValueError(
            f"model {type(model).__name__} failed on inputs of per-sample shape {tuple(x.shape[1:])} "
            f"(batch shape {tuple(x.shape)}, dtype {x.dtype}); check the input shape the model "
            f"expects. Original error: {err}"
        ) from err
    logits = as_logits(out, x.shape[0])
    if not torch.isfinite(logits).all():
        raise ValueError(
            f"model {type(model).__name__} produced non-finite outputs (NaN/inf) on a batch of shape "
            f"{tuple(x.shape)}; the kernel would be meaningless"
        )
    return logits
