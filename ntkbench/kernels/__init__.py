"""Empirical-NTK kernels: Jacobians, exact and projected eNTK variants, CK/Em, HDF5 streaming.

Public API::

    from ntkbench import kernels
    J = kernels.jacobian(model, x)                      # (N, C, P)
    K = kernels.compute(model, x, y, kind="trntk")      # (N, M)
    kernels.compute_to_hdf5(path, model, x, kind="trntk", group="train_train")
"""
from .api import KINDS, NORMALISED_KINDS, KernelOptions, NonFiniteKernelError, compute
from .forward import parameter_groups
from .generic import jacobian
from .streaming import compute_to_hdf5, identity_options

__all__ = ["KINDS", "NORMALISED_KINDS", "KernelOptions", "NonFiniteKernelError", "compute", "compute_to_hdf5", "identity_options", "jacobian",
           "parameter_groups"]
