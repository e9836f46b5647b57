"""The public kernel function :func:`compute`: any kernel kind of a model, in memory.

The engine it drives (options, feature sources, block contractions) is
:mod:`ntkbench.kernels.engine`; :func:`ntkbench.kernels.compute_to_hdf5` is the streamed,
resumable twin for kernels larger than memory.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .engine import KernelOptions, check_finite, check_same_sample_shape, kernel_in_memory, make_source, normalise
from .fast import Impl
from .forward import eval_mode, kernel_device
from .inputs import as_input_tensor, cast_input
from .threads import thread_budget

__all__ = ["compute"]


def compute(
    model: nn.Module,
    x: Any,
    y: Any = None,
    kind: str = "trntk",
    *,
    proj_dim: int = 10240,
    proj_type: str = "gaussian",
    seed: int = 0,
    layers: Sequence[str] | None = None,
    importance: Any = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    layerwise: bool = False,
    impl: Impl | str = Impl.AUTO,
    proj_cache_mb: int | None = None,
    threads: int | str | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Compute an empirical-NTK-family kernel between the inputs ``x`` and ``y``.

    Args:
        model: network returning (N, C) logits ((N,) means C = 1), as a tensor, a dict with a
            ``'logits'`` entry or an object with a ``.logits`` attribute (Hugging Face style).
            Evaluated in eval mode; each module's mode is restored afterwards. The model is
            never moved or cast. Models torch.func cannot vmap (nn.RNN / GRU / LSTM, ...) get
            exact per-sample gradients from a loop over samples (logged; slower).
        x: Tensor, ndarray, Dataset or DataLoader (tuples: the first element is the input).
        y: the second input, of the same kinds as ``x``. ``y=None`` means y = x (then the
            normalised kinds have an exact unit diagonal).
        kind: one of ``KINDS`` (definitions in SPEC section 1):
            entk (N, M, C, C); trntk0 = sum_c ⟨g^c, g^c⟩; pntk0 = (1/C) ⟨sum_c g^c, sum_c g^c⟩;
            trntk / pntk their cosine normalisations; proj-trntk / proj-pntk the same from
            projected gradients R g (R: K x P, entries N(0,1) or +-1, times 1/sqrt(K); or
            proj_type="kronecker": layer-wise R_out (x) R_in, a different estimator, see
            :class:`ntkbench.kernels.projection.KroneckerProjector`);
            ck cosine similarity of the last nn.Linear's input; em the cosine-normalised sum of
            activation Grams over ``layers``.
        proj_dim: K, the number of rows of the projection R (projected kinds only).
        proj_type: how R is drawn: "gaussian", "rademacher" or "kronecker" (see ``kind``);
            projected kinds only.
        seed: R's seed (projected kinds only); same seed, same R, bit for bit on every device
            (:mod:`ntkbench.kernels.philox`).
        proj_cache_mb: memory budget for R's tiles kept across sample chunks (None: 1 GiB on
            the CPU, a quarter of the free GPU memory; 0: regenerate). Never changes values.
        layers: em layer module names; default every activation module (ReLU, GELU, ...).
        importance: length-C already-exponentiated class weights I_c^beta; g^c is multiplied
            by sqrt(importance[c]) (= I_c^(beta/2)) before any contraction.
        batch_size: samples per forward/backward batch and per contraction block.
        device: computation device; None = the model's device. The result lives there.
        dtype: computation dtype.
        layerwise: return ``{parameter group (module name) or em layer: tensor}`` whose values
            sum to the kernel. For normalised kinds each part is divided by the same total
            normaliser sqrt(k0(x,x) k0(y,y)). Not available for proj-* and ck.
        impl: an :class:`ntkbench.kernels.Impl` or its string: "auto" (factorised fast path
            where possible, verified), "fast" (error instead of falling back when
            verification fails) or "generic" (torch.func everywhere).
        threads: CPU intra-op threads for this call: None = torch's setting capped by the
            job's allocated CPUs (deterministic); ``"free"`` = also capped by the cores other
            processes leave free (faster on a busy machine, last bits may vary between runs);
            an int = exactly that many. See :mod:`ntkbench.kernels.threads`. The caller's
            setting is restored. Never changes values beyond float rounding.

    Returns:
        (N, M) tensor ((N, M, C, C) for entk), or a dict of them with ``layerwise``.
    """
    # The thread budget covers the whole call: the normalisation and finiteness checks after the
    # contractions are tiny ops too, which collapse under contention when run with more threads
    # than free cores (5 ms each at load 6 on 2 cores).
    with thread_budget(threads):
        opts = KernelOptions.build(
            kind, dtype=dtype, importance=importance, layers=layers, proj_dim=proj_dim, proj_type=proj_type,
            seed=seed, batch_size=batch_size, layerwise=layerwise, impl=impl, proj_cache_mb=proj_cache_mb,
        )
        X = as_input_tensor(x, "x")
        same = y is None
        Y = X if same else as_input_tensor(y, "y")
        check_same_sample_shape(X, Y)
        dev = kernel_device(model, device)
        with eval_mode(model):
            source = make_source(model, opts, dev, cast_input(X[:1], dev, opts.torch_dtype))
            kernel, dx, dy = kernel_in_memory(source, opts, X, Y, same, dev)
        what = f"kernel {kind!r} ({X.shape[0]} x {Y.shape[0]})"
        # The self-kernels first: an infinite one would be normalised to a silent 0.
        check_finite(dx, f"{what}: self-kernels of x")
        if dy is not None:
            check_finite(dy, f"{what}: self-kernels of y")
        for part, value in (kernel.items() if layerwise else [("", kernel)]):
            check_finite(value, what + (f", part {part!r}" if part else ""))
        if not opts.normalised:
            return kernel
        dy = dx if dy is None else dy
        if layerwise:
            return {k: normalise(v, dx, dy) for k, v in kernel.items()}
        out = normalise(kernel, dx, dy)
        check_finite(out, f"normalised {what}")
        if same:
            out.diagonal().fill_(1.0)  # exact, despite rounding differences between blocks
        return out
