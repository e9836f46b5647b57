"""Model zoo: build a network from a config spec, save and load it with that spec.

A *spec* is a JSON-serialisable dict ``{"name": ..., **kwargs}``; checkpoints store the spec
beside the weights so any stage can rebuild the exact network without the config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ntkbench.integrity import CorruptFileError, load_torch, save_torch

__all__ = ["build", "register", "save_checkpoint", "load_checkpoint", "from_pretrained", "REGISTRY"]

REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model constructor to the zoo under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        REGISTRY[name] = fn
        return fn

    return wrap


def build(spec: dict[str, Any]) -> nn.Module:
    """Instantiate the model a spec describes (weights freshly initialised)."""
    _import_zoo()
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in REGISTRY:
        raise ValueError(f"model.name: unknown model {name!r}; choose one of {sorted(REGISTRY)}")
    try:
        return REGISTRY[name](**spec)
    except TypeError as err:
        raise ValueError(f"model {name!r}: bad arguments {spec}: {err}") from err


def save_checkpoint(path: str | Path, model: nn.Module, spec: dict[str, Any], **extra: Any) -> None:
    """Save weights, spec and any extra JSON-able info atomically, with a SHA-256 of all of it
    (see :func:`ntkbench.integrity.save_torch`) that :func:`load_checkpoint` verifies."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch(path, {"spec": spec, "state_dict": state, **extra})


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint; returns (model in eval mode, checkpoint dict).

    The checkpoint's checksum is verified first: a damaged, truncated or foreign file raises
    :class:`ntkbench.integrity.CorruptFileError` naming the file and how to recompute it.
    """
    ckpt = load_torch(path, what="model checkpoint")
    if "spec" not in ckpt or "state_dict" not in ckpt:
        raise CorruptFileError(path, f"not an ntkbench model checkpoint (keys {sorted(ckpt)}; "
                                     "expected 'spec' and 'state_dict')")
    model = build(ckpt["spec"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CorruptFileError(path, f"its weights do not fit the model its spec describes ({err})") from err
    return model.to(device).eval(), ckpt


def from_pretrained(path: str | Path, task: str | None = None) -> nn.Module:
    """A local Hugging Face sequence- or image-classification checkpoint as a model of the zoo.

    Args:
        path: directory written by ``save_pretrained`` (config.json + weights).
        task: ``"sequence-classification"``, ``"image-classification"``, or None to infer it
            from the config's ``architectures``.

    Returns:
        An ``nn.Module`` in eval mode whose ``forward(x)`` gives the (N, C) logits of token ids
        (N, L) or pixel values (N, C, H, W); see :mod:`ntkbench.models.huggingface`. Needs the
        optional extra: ``pip install 'ntkbench[hf]'``.
    """
    from ntkbench.models import huggingface

    return huggingface.from_pretrained(path, task)


def _import_zoo() -> None:
    # Importing the modules runs their @register decorators. Static imports, so that code
    # fingerprints (ntkbench.provenance) see every model module.
    from ntkbench.models import classifiers, modmlp, reference, shan_cnn, tms, transformer  # noqa: F401
    from ntkbench.models import huggingface, mobilenet, resnet, text_encoder, vit  # noqa: F401
