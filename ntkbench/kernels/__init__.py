"""Empirical-NTK kernels: Jacobians, exact and projected eNTK variants, CK/Em, HDF5 streaming.

Public API::

    from ntkbench import kernels
    J = kernels.jacobian(model, x)                      # (N, C, P)
    K = kernels.compute(model, x, y, kind="trntk")      # (N, M)
    kernels.compute_to_hdf5(path, model, x, kind="trntk", group="train_train")

How gradients are computed is an explicit choice (:class:`Impl`); the engine's seams are
protocols: a kernel is computed from a :class:`FeatureSource`, and projected kinds go through
a :class:`Projector`. Other per-sample-gradient code (``ntkbench.attribution``) uses the same
building blocks: :func:`functional_state`, :func:`eval_mode`, :func:`as_logits` and
:func:`project_rows`.
"""
from .api import compute
from .engine import KINDS, NORMALISED_KINDS, PROJECTED_KINDS, FeatureSource, KernelOptions, NonFiniteKernelError
from .fast import Impl
from .forward import as_logits, eval_mode, parameter_groups, trainable_parameters
from .generic import functional_state, jacobian
from .projection import Projector, project_rows
from .streaming import compute_to_hdf5, identity_options

__all__ = ["KINDS", "NORMALISED_KINDS", "PROJECTED_KINDS", "FeatureSource", "Impl", "KernelOptions",
           "NonFiniteKernelError", "Projector", "as_logits", "compute", "compute_to_hdf5", "eval_mode",
           "functional_state", "identity_options", "jacobian", "parameter_groups", "project_rows",
           "trainable_parameters"]
