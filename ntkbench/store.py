"""HDF5 storage of kernel matrices: layout, provenance, block bookkeeping for resume.

Layout of one kernel group (several groups may share a file, e.g. "train_train" and
"test_train")::

    <group>/kernel        (N, M) or (N, M, C, C) for entk, chunked
    <group>/diag_x        unnormalised self-kernels of x: (N,) or (N, C, C)
    <group>/diag_y        the same for y
    <group>/diag_done     (row blocks,) uint8: diagonal blocks finished
    <group>/blocks_done   (row blocks, column blocks) uint8: kernel blocks finished
    <group>/features_x|y  projected kinds only: (N, C', K) projected gradients
    attrs                 kind, options (JSON), fingerprints, versions, created, complete
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import h5py
import numpy as np
import torch
from torch import nn

from ntkbench.integrity import CorruptFileError, recompute_hint

__all__ = [
    "KernelRecord",
    "read_kernel",
    "list_kernel_groups",
    "model_fingerprint",
    "tensor_fingerprint",
    "IDENTITY_KEYS",
    "open_kernel_group",
    "mark_done",
    "IncompatibleKernelFile",
    "KernelCheckError",
    "check_kernel",
    "CHECKSUMMED",
    "VALUE_DATASETS",
    "read_dataset",
    "unchecked_datasets",
    "require_checksums",
    "decode_attr",
]

# Attributes that must match for a partial group to be resumed.
IDENTITY_KEYS = (
    "kind", "identity_options", "model_fingerprint", "data_fingerprint_x", "data_fingerprint_y",
    "block_size", "kernel_shape", "same_data",
)


# HDF5's fletcher32 filter: a checksum per chunk, written with the chunk and verified by HDF5 on
# every read of it, so bit-rot in a kernel value is a read error, never a plausible number.
CHECKSUMMED: dict[str, Any] = {"fletcher32": True}

# The datasets that hold kernel values; each must carry the checksum.
VALUE_DATASETS = ("kernel", "diag_x", "diag_y", "features_x", "features_y")


class IncompatibleKernelFile(ValueError):
    """An existing kernel group was computed with different settings and cannot be resumed."""


@dataclass
class KernelRecord:
    """A kernel read back from HDF5."""

    kernel: np.ndarray
    diag_x: np.ndarray
    diag_y: np.ndarray
    attrs: dict[str, Any]


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the state_dict (names, dtypes, shapes and bytes), first 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def tensor_fingerprint(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes, first 16 hex digits."""
    t = t.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _attr_value(value: Any) -> Any:
    """HDF5 attributes hold scalars and strings; anything else is stored as JSON."""
    if isinstance(value, str):
        return str(value)  # plain str: subclasses (torch.__version__) have no HDF5 type
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def decode_attr(value: Any) -> Any:
    """An HDF5 attribute value as Python: bytes decoded, numpy scalars unwrapped."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _chunks(shape: tuple[int, ...], block_size: int) -> tuple[int, ...]:
    """Chunk of whole trailing class dims and at most ~4 MB of float32."""
    tail = shape[2:]
    per_entry = int(np.prod(tail)) if tail else 1
    side = max(1, min(block_size, int(np.sqrt((1 << 20) / per_entry))))
    return (min(side, shape[0]), min(side, shape[1])) + tuple(tail)


def open_kernel_group(
    f: h5py.File,
    group: str,
    identity: Mapping[str, Any],
    kernel_shape: tuple[int, ...],
    diag_shape_x: tuple[int, ...],
    diag_shape_y: tuple[int, ...],
    num_blocks: tuple[int, int],
    block_size: int,
    dtype: np.dtype,
    extra_attrs: Mapping[str, Any] | None = None,
) -> tuple[h5py.Group, bool]:
    """Create ``group`` with its datasets, or reopen it for resuming.

    Returns (group, resumed). Raises :class:`IncompatibleKernelFile` when the group exists
    with different identity attributes (kind, options, fingerprints, block layout).
    """
    wanted = {k: _attr_value(identity[k]) for k in IDENTITY_KEYS}
    if group in f:
        grp = f[group]
        stored = {k: decode_attr(grp.attrs.get(k)) for k in IDENTITY_KEYS}
        diffs = [f"{k}: file has {stored[k]!r}, requested {wanted[k]!r}" for k in IDENTITY_KEYS if stored[k] != wanted[k]]
        unchecked = unchecked_datasets(grp)
        if unchecked:  # written by an older ntkbench: blocks added now would be checksummed, the rest not
            diffs.append(f"datasets {unchecked} carry no fletcher32 checksums")
        if diffs:
            raise IncompatibleKernelFile(
                f"{f.filename}:{group} holds a kernel computed with different settings, refusing to resume; "
                + "; ".join(diffs) + ". Delete the group/file or write elsewhere."
            )
        return grp, True
    grp = f.create_group(group)
    grp.create_dataset("kernel", shape=kernel_shape, dtype=dtype, chunks=_chunks(kernel_shape, block_size), **CHECKSUMMED)
    grp.create_dataset("diag_x", shape=diag_shape_x, dtype=dtype, chunks=True, **CHECKSUMMED)
    grp.create_dataset("diag_y", shape=diag_shape_y, dtype=dtype, chunks=True, **CHECKSUMMED)
    grp.create_dataset("diag_done", shape=(num_blocks[0] + (0 if identity["same_data"] else num_blocks[1]),), dtype=np.uint8)
    grp.create_dataset("blocks_done", shape=num_blocks, dtype=np.uint8)
    for key, value in wanted.items():
        grp.attrs[key] = value
    for key, value in (extra_attrs or {}).items():
        grp.attrs[key] = _attr_value(value)
    grp.attrs["complete"] = False
    grp.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    f.flush()
    return grp, False


def mark_done(grp: h5py.Group, name: str, index: tuple[int, ...] | int) -> None:
    """Record a finished block (after its data was written) and flush to disk."""
    grp[name][index] = 1
    grp.file.flush()


def _open_kernel_file(path: str | os.PathLike) -> h5py.File:
    """Open ``path`` read-only; errors name the file (missing, not HDF5, unreadable)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"kernel file {path} does not exist")
    if os.path.isdir(path) or not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not an HDF5 kernel file (no HDF5 signature); "
                         "expected a file written by ntkbench.kernels.compute_to_hdf5")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} cannot be read as an HDF5 kernel file (truncated or corrupt?): {err}") from err


def list_kernel_groups(path: str | os.PathLike) -> list[str]:
    """Names of the kernel groups in a file."""
    with _open_kernel_file(path) as f:
        return [name for name, obj in f.items() if isinstance(obj, h5py.Group) and "kernel" in obj]


def read_kernel(path: str | os.PathLike, group: str = "kernel", allow_incomplete: bool = False) -> KernelRecord:
    """Read a kernel group written by :func:`ntkbench.kernels.compute_to_hdf5`.

    JSON-valued attributes (options, user attrs) are decoded. An unfinished group raises
    unless ``allow_incomplete``.
    """
    with _open_kernel_file(path) as f:
        if group not in f:
            raise KeyError(f"{path} has no kernel group {group!r}; groups: {[k for k in f.keys()]}")
        grp = f[group]
        missing = [d for d in ("kernel", "diag_x", "diag_y") if not isinstance(grp, h5py.Group) or d not in grp]
        if missing:
            raise ValueError(f"{path}:{group} is not a kernel group written by compute_to_hdf5 "
                             f"(no {', '.join(missing)})")
        attrs: dict[str, Any] = {}
        for key, value in grp.attrs.items():
            value = decode_attr(value)
            if isinstance(value, str) and value[:1] in "[{":
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            attrs[key] = value
        if not attrs.get("complete", False) and not allow_incomplete:
            raise ValueError(f"{path}:{group} is incomplete (an interrupted computation); resume it first")
        return KernelRecord(read_dataset(grp["kernel"], ..., path), read_dataset(grp["diag_x"], ..., path),
                            read_dataset(grp["diag_y"], ..., path), attrs)


def unchecked_datasets(grp: h5py.Group) -> list[str]:
    """The value datasets of kernel group ``grp`` that carry no fletcher32 checksum."""
    return [name for name in VALUE_DATASETS if name in grp and not grp[name].fletcher32]


def require_checksums(path: str | os.PathLike, group: str, grp: h5py.Group) -> None:
    """Raise :class:`ntkbench.integrity.CorruptFileError` unless every value dataset of ``grp``
    carries its checksum (a file written before checksums cannot be verified)."""
    unchecked = unchecked_datasets(grp)
    if unchecked:
        raise CorruptFileError(path, f"group {group}: datasets {unchecked} carry no fletcher32 checksums "
                                     "(written by an older ntkbench), so their values cannot be verified")


def read_dataset(ds: h5py.Dataset, selection: Any, path: str | os.PathLike) -> np.ndarray:
    """``ds[selection]``; a read error (a chunk whose fletcher32 checksum does not match, a
    truncated file) raises :class:`ntkbench.integrity.CorruptFileError` naming the file and dataset."""
    try:
        return ds[selection]
    except OSError as err:
        checksum = " (a chunk's fletcher32 checksum does not match: the stored values were altered)" \
            if ds.fletcher32 and "filter" in str(err).lower() else " (truncated or corrupt?)"
        raise CorruptFileError(path, f"dataset {ds.name} cannot be read{checksum}: {err}") from err


class KernelCheckError(ValueError):
    """A kernel file is not what the reading stage expects; the message names the file."""


def check_kernel(path: str | os.PathLike, group: str, expected: Mapping[str, Any], *,
                 normalised: bool, symmetric: bool, atol: float = 1e-5, block: int = 4096) -> None:
    """Check kernel ``group`` of ``path`` before anything consumes it; memory bounded by ``block``.

    ``expected`` maps attribute names (``kind``, ``identity_options``, ``model_fingerprint``,
    ``data_fingerprint_x``, ``data_fingerprint_y``, ...) to the values the reading stage
    expects; every one must match, and the group must be complete. The values must be finite;
    ``symmetric`` kernels (train x train) must equal their transpose; ``normalised`` ones must
    have |k| <= 1 (up to ``atol``), and a unit diagonal when symmetric. Raises
    :class:`KernelCheckError` naming the file, the group and what differs.
    """
    where = f"{path}:{group}"
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise KernelCheckError(f"{path}: not a readable HDF5 kernel file ({err})") from err
    with f:
        if group not in f or not isinstance(f[group], h5py.Group) or "kernel" not in f[group]:
            raise KernelCheckError(f"{path} has no kernel group {group!r}; groups: {sorted(f.keys())}")
        grp = f[group]
        attrs = {key: grp.attrs.get(key) for key in expected}
        diffs = [f"{key}: file has {_normal(attrs[key])!r}, expected {_normal(_attr_value(value))!r}"
                 for key, value in expected.items() if _normal(attrs[key]) != _normal(_attr_value(value))]
        if not bool(decode_attr(grp.attrs.get("complete", False))):
            diffs.append("the computation did not finish (complete = False)")
        if diffs:
            raise KernelCheckError(f"{where} is not the kernel this stage needs: " + "; ".join(diffs)
                                   + f". {recompute_hint(path)}")
        require_checksums(path, group, grp)
        for name in ("diag_x", "diag_y"):
            read_dataset(grp[name], ..., path)  # verifies their checksums
        ds = grp["kernel"]
        n, m = ds.shape[:2]
        if symmetric and n != m:
            raise KernelCheckError(f"{where}: a train x train kernel must be square, has shape {ds.shape}")
        for r0 in range(0, n, block):
            rows = read_dataset(ds, np.s_[r0 : r0 + block], path)
            bad = ~np.isfinite(rows)
            if bad.any():
                at = np.argwhere(bad)[0]
                at[0] += r0
                raise KernelCheckError(f"{where}: {int(bad.sum())} non-finite value(s) in rows {r0}-{r0 + len(rows) - 1}, "
                                       f"first at {at.tolist()}")
            if normalised:
                peak = float(np.abs(rows).max()) if rows.size else 0.0
                if peak > 1 + atol:
                    raise KernelCheckError(f"{where}: a normalised kernel has |k| = {peak:.6g} > 1 in rows "
                                           f"{r0}-{r0 + len(rows) - 1}")
            if symmetric:
                for c0 in range(0, r0 + len(rows), block):
                    a = rows[:, c0 : c0 + block]
                    b = read_dataset(ds, np.s_[c0 : c0 + block, r0 : r0 + len(rows)], path)
                    bt = b.transpose(1, 0, 3, 2) if b.ndim == 4 else b.T
                    scale = max(1.0, float(np.abs(a).max()) if a.size else 0.0)
                    if a.size and float(np.abs(a - bt).max()) > atol * scale:
                        raise KernelCheckError(f"{where}: not symmetric (max |K - K^T| = {float(np.abs(a - bt).max()):.3g} "
                                               f"in rows {r0}-{r0 + len(rows) - 1}, columns {c0}-{c0 + a.shape[1] - 1})")
                if normalised:
                    diag = np.diagonal(rows[:, r0 : r0 + len(rows)], 0, 0, 1)
                    off = float(np.abs(diag - 1).max()) if diag.size else 0.0
                    if off > atol:
                        raise KernelCheckError(f"{where}: a normalised kernel's diagonal is not 1 "
                                               f"(max |k(x,x) - 1| = {off:.3g})")


def _normal(value: Any) -> Any:
    """Attributes compared as the JSON-decoded values, so key order and bytes/str never matter."""
    value = decode_attr(value)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
