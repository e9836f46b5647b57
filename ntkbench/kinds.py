"""The kernel-kind registry: the one place that says what each kernel kind is.

Every layer asks this registry instead of comparing kind strings: the kernel API (which
feature source, projection, normalisation, sum over classes), the streaming writer, the
kernel stage (which config options a kind depends on, so that changing ``proj_dim`` reruns
only the projected kernels), the stages' input checks (normalised kinds must have a unit
diagonal and |k| <= 1) and the tables (display names). Pure Python, no torch: the
Snakefile imports it at parse time.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KernelKind", "KINDS", "kind_info", "kind_names", "options_for"]


@dataclass(frozen=True)
class KernelKind:
    """What one kernel kind needs and produces (definitions: SPEC section 1).

    Attributes:
        name: config and file name, e.g. ``"proj-trntk"``.
        display: the paper's name, for tables and figures.
        source: ``"gradients"`` (per-class Jacobians g^c) or ``"activations"`` (CK, Em).
        normalised: cosine-normalised by the self-kernels (unit diagonal, |k| <= 1).
        projected: computed from R g with a random K x P matrix R.
        sum_over_classes: contracts Σ_c g^c (pNTK family) rather than each g^c.
        per_class_blocks: the (N, M, C, C) eNTK rather than an (N, M) kernel.
        options: the ``kernel_options`` config keys whose values change this kind's numbers
            (beyond the ``COMMON_OPTIONS`` every kind depends on).
        layerwise: can be split into a sum over parameter groups / layers.
    """

    name: str
    display: str
    source: str
    normalised: bool
    projected: bool = False
    sum_over_classes: bool = False
    per_class_blocks: bool = False
    options: tuple[str, ...] = ()
    layerwise: bool = True

    @property
    def needs_gradients(self) -> bool:
        return self.source == "gradients"


# Config keys every kind depends on: the dtype changes the numbers, and the batch size can
# change their last bits (the GEMMs are blocked differently), so both rerun every kernel.
COMMON_OPTIONS = ("batch_size", "dtype")
_PROJECTION = ("proj_dim", "proj_type", "proj_seed")

KINDS: dict[str, KernelKind] = {
    k.name: k
    for k in (
        KernelKind("entk", "eNTK", "gradients", normalised=False, per_class_blocks=True),
        KernelKind("trntk", "trNTK", "gradients", normalised=True),
        KernelKind("trntk0", "trNTK⁰", "gradients", normalised=False),
        KernelKind("pntk", "pNTK", "gradients", normalised=True, sum_over_classes=True),
        KernelKind("pntk0", "pNTK⁰", "gradients", normalised=False, sum_over_classes=True),
        KernelKind("proj-trntk", "proj-trNTK", "gradients", normalised=True, projected=True,
                   options=_PROJECTION, layerwise=False),
        KernelKind("proj-pntk", "proj-pNTK", "gradients", normalised=True, projected=True,
                   sum_over_classes=True, options=_PROJECTION, layerwise=False),
        KernelKind("ck", "CK", "activations", normalised=True, layerwise=False),
        KernelKind("em", "Em", "activations", normalised=True, options=("em_layers",)),
    )
}


def kind_names() -> tuple[str, ...]:
    """All kind names, in registry order."""
    return tuple(KINDS)


def kind_info(kind: str) -> KernelKind:
    """The registry entry of ``kind``; a clear error for an unknown kind."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown kernel kind {kind!r}; valid kinds: {', '.join(KINDS)}") from None


def options_for(kind: str, kernel_options: dict) -> dict:
    """The subset of a config's ``kernel_options`` that changes the numbers of ``kind``.

    ``block_size`` (the HDF5 block layout) is left out: the stage receives it separately.
    """
    keys = COMMON_OPTIONS + kind_info(kind).options
    return {k: kernel_options[k] for k in keys if k in kernel_options}
