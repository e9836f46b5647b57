"""Turn the inputs users pass (tensors, arrays, Datasets, DataLoaders) into one tensor."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["as_input_tensor", "iter_batches", "cast_input"]


def _first_element(item: Any) -> torch.Tensor:
    """Datasets yield ``x`` or ``(x, y, ...)``; the kernel needs only ``x``."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError("dataset item is an empty tuple; expected a tensor or (input, ...)")
        item = item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, torch.Tensor):
        item = torch.as_tensor(item)
    return item


def as_input_tensor(x: Any, name: str = "x") -> torch.Tensor:
    """Materialise ``x`` (Tensor, ndarray, Dataset or DataLoader) as one (N, ...) tensor.

    Inputs are small next to an N x M kernel, so holding them whole keeps block-wise kernel
    code simple and makes the data fingerprint well defined (a shuffling DataLoader is read
    once, in the order it yields).
    """
    if isinstance(x, torch.Tensor):
        out = x
    elif isinstance(x, np.ndarray):
        out = torch.from_numpy(x)
    elif isinstance(x, DataLoader):
        parts = [_first_element(batch) for batch in x]
        if not parts:
            raise ValueError(f"{name}: DataLoader yielded no batches")
        out = torch.cat(parts, dim=0)
    elif isinstance(x, Dataset):
        try:
            n = len(x)  # type: ignore[arg-type]
        except TypeError as err:
            raise TypeError(f"{name}: Dataset without __len__ is not supported; wrap it in a DataLoader") from err
        if n == 0:
            raise ValueError(f"{name}: Dataset is empty")
        out = torch.stack([_first_element(x[i]) for i in range(n)], dim=0)
    else:
        raise TypeError(
            f"{name}: expected a torch.Tensor, numpy array, Dataset or DataLoader, got {type(x).__name__}"
        )
    if out.dim() == 0:
        raise ValueError(f"{name}: expected a batch of inputs (N, ...), got a scalar")
    if out.shape[0] == 0:
        raise ValueError(f"{name}: no samples (shape {tuple(out.shape)})")
    if out.is_floating_point() or out.is_complex():
        finite = torch.isfinite(out)
        bad = ~(finite.flatten(1).all(dim=1) if out.dim() > 1 else finite)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: {int(bad.sum())} of {out.shape[0]} samples hold non-finite values (NaN/inf), "
                f"the first is sample {int(torch.nonzero(bad)[0])}; a kernel on them would be meaningless"
            )
    return out


def cast_input(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Move a batch to ``device``; floating inputs take ``dtype``, integer ones (token ids) stay."""
    if x.is_floating_point():
        return x.to(device=device, dtype=dtype)
    return x.to(device=device)


def iter_batches(x: torch.Tensor, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, x[start:start+batch_size])`` over the first dimension."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, x.shape[0], batch_size):
        yield start, x[start : start + batch_size]
