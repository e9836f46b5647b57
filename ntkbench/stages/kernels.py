"""Stage 2: eNTK-family kernels, one HDF5 file per (experiment, seed, kind), and the checks
every later stage runs on a kernel file before it reads it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import torch
from torch import nn

from ntkbench import kinds, store
from ntkbench.data import DataBundle, load_bundle
from ntkbench.kernels import KernelOptions, compute_to_hdf5, identity_options
from ntkbench.kernels.tiling import compute_tile, gather_tiles
from ntkbench.stages.common import load_model, snakemake_field
from ntkbench.utils import get_logger, resolve_device

log = get_logger(__name__)

__all__ = ["engine_options", "kernel_groups", "expected_identity", "check_kernel_file", "kernel_stage", "KernelTileJob",
           "kernel_tile_stage", "kernel_gather_stage"]


def engine_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the kernel engine for ``kind`` from the config's kernel options
    (as the rule passes them: :func:`ntkbench.kinds.options_for`)."""
    info = kinds.kind_info(kind)
    out: dict[str, Any] = {"batch_size": options["batch_size"], "dtype": getattr(torch, options["dtype"])}
    if info.projected:
        out.update(proj_dim=options["proj_dim"], proj_type=options["proj_type"], seed=options["proj_seed"])
    if "em_layers" in info.options and options.get("em_layers"):
        out["layers"] = options["em_layers"]
    return out


def kernel_groups(bundle: DataBundle) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """HDF5 group -> (rows, columns or None for the symmetric train x train kernel)."""
    groups: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {"train_train": (bundle.train.x, None)}
    groups.update({f"{name}_train": (s.x, bundle.train.x) for name, s in bundle.eval_splits.items()})
    return groups


def expected_identity(kind: str, options: dict[str, Any], model: nn.Module, x: torch.Tensor,
                      y: torch.Tensor | None) -> dict[str, Any]:
    """The provenance attributes a kernel of ``kind`` on (x, y) computed from ``model`` carries."""
    eng = {k: v for k, v in engine_options(kind, options).items() if k != "batch_size"}
    opts = KernelOptions.build(kind, **eng)
    fp_x = store.tensor_fingerprint(x)
    return {"kind": kind, "identity_options": identity_options(opts), "model_fingerprint": store.model_fingerprint(model),
            "data_fingerprint_x": fp_x, "data_fingerprint_y": fp_x if y is None else store.tensor_fingerprint(y)}


def check_kernel_file(path: str | Path, kind: str, options: dict[str, Any], model: nn.Module,
                      bundle: DataBundle, groups: list[str] | None = None) -> None:
    """Check every group a stage will read: kind, options, model and data fingerprints,
    finite values, symmetry of train x train, unit diagonal and |k| <= 1 when normalised."""
    info = kinds.kind_info(kind)
    pairs = kernel_groups(bundle)
    for group in groups or list(pairs):
        if group not in pairs:
            raise KeyError(f"{path}: no data split for kernel group {group!r} in this bundle")
        x, y = pairs[group]
        store.check_kernel(path, group, expected_identity(kind, options, model, x, y),
                           normalised=info.normalised, symmetric=y is None)


def _partial_is_readable(partial: Path) -> bool:
    try:
        with h5py.File(partial, "r"):
            return True
    except OSError:
        return False


def _inputs(data_path: str | Path, model_path: str | Path, device: str, logits_path: str | Path | None):
    """(data bundle, device, model on it, provenance attributes) of a kernel job; the model is
    checked to reproduce ``logits_path`` when given (see :func:`ntkbench.stages.common.load_model`)."""
    bundle = load_bundle(data_path)
    dev = resolve_device(device)
    model, ckpt = load_model(model_path, bundle, logits_path, device=dev)
    attrs = {"experiment_model": ckpt["spec"], "seed": int(ckpt.get("seed", -1)), "data_meta": bundle.meta}
    return bundle, dev, model, attrs


def _discard_stale_partial(partial: Path) -> None:
    if partial.exists() and not _partial_is_readable(partial):
        log.warning("discarding %s: not a readable HDF5 file (a job killed while creating it)", partial)
        partial.unlink()


def _resumable(partial: Path, compute) -> None:
    """Run ``compute()`` into ``partial``; a partial file of other settings is discarded once."""
    _discard_stale_partial(partial)
    try:
        compute()
    except store.IncompatibleKernelFile as err:
        log.warning("discarding the partial kernel and starting over: %s", err)
        partial.unlink()
        compute()


def kernel_stage(data_path: str | Path, model_path: str | Path, kind: str, options: dict[str, Any],
                 block_size: int, device: str, out_path: str | Path, *, logits_path: str | Path | None = None) -> None:
    """Compute kernel ``kind`` on train x train and every evaluation split x train into HDF5.

    Blocks are streamed into ``<out>.partial``: an interrupted job resumes from its last
    finished block when the partial file was computed with the same settings, model and data;
    otherwise the stale partial file is discarded (and the reason logged) and the job starts
    over. The finished file is checked like any reader would check it, then renamed, so
    Snakemake never sees a half-written or non-finite kernel. With ``logits_path`` (the
    workflow passes the network's ``logits.npz``), the network is first checked to reproduce them.
    """
    bundle, dev, model, attrs = _inputs(data_path, model_path, device, logits_path)
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")

    def compute() -> None:
        for group, (x, y) in kernel_groups(bundle).items():
            log.info("kernel %s: group %s, %d x %d", kind, group, len(x), len(bundle.train))
            compute_to_hdf5(partial, model, x, y, kind=kind, group=group, block_size=block_size,
                            attrs=attrs, device=dev, **engine_options(kind, options))

    _resumable(partial, compute)
    check_kernel_file(partial, kind, options, model, bundle)
    os.replace(partial, out_path)


def _tile_of(wildcards: Any) -> tuple[int, int]:
    return int(wildcards.i), int(wildcards.j)


@dataclass(frozen=True)
class KernelTileJob:
    """One job of a tiled kernel (rule ``kernel_tile``): tile ``tile`` = (i, j) of group
    ``group`` of kernel ``kind``, computed with ``options`` (the kernel's config options),
    ``block_size`` and ``tile_size``, on ``device``; the network at ``model_path`` must still
    reproduce its logits at ``logits_path`` (None: not checked)."""

    data_path: str | Path = snakemake_field("input.data")
    model_path: str | Path = snakemake_field("input.model")
    kind: str = snakemake_field("wildcards.kernel")
    options: dict[str, Any] = snakemake_field("params.options")
    block_size: int = snakemake_field("params.block_size")
    tile_size: int = snakemake_field("params.tile_size")
    group: str = snakemake_field("wildcards.group")
    tile: tuple[int, int] = snakemake_field("wildcards", convert=_tile_of)
    device: str = snakemake_field("params.device")
    out_path: str | Path = snakemake_field("output[0]")
    logits_path: str | Path | None = snakemake_field("input.logits", default=None)


def kernel_tile_stage(job: KernelTileJob) -> None:
    """Compute one tile of a tiled kernel (see :mod:`ntkbench.kernels.tiling`); resumable,
    written to ``<out>.partial`` then renamed."""
    bundle, dev, model, _ = _inputs(job.data_path, job.model_path, job.device, job.logits_path)
    x, y = kernel_groups(bundle)[job.group]
    out_path = Path(job.out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    log.info("kernel %s: group %s, tile %s of tile_size %d", job.kind, job.group, tuple(job.tile), job.tile_size)
    _resumable(partial, lambda: compute_tile(partial, model, x, y, kind=job.kind, tile=tuple(job.tile),
                                             tile_size=job.tile_size, block_size=job.block_size, device=dev,
                                             **engine_options(job.kind, job.options)))
    os.replace(partial, out_path)


def kernel_gather_stage(data_path: str | Path, model_path: str | Path, kind: str, options: dict[str, Any],
                        block_size: int, tile_size: int, tiles: dict[str, dict[tuple[int, int], str | Path]],
                        device: str, out_path: str | Path, *, logits_path: str | Path | None = None) -> None:
    """Gather every group's tiles into the kernel file the next stages read: the same layout
    and provenance as :func:`kernel_stage`'s, checked like a reader checks it."""
    bundle, dev, model, attrs = _inputs(data_path, model_path, device, logits_path)
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    if partial.exists():
        partial.unlink()  # a gather restarts from its tiles
    groups = kernel_groups(bundle)
    if sorted(tiles) != sorted(groups):
        raise ValueError(f"{out_path}: tiles for groups {sorted(tiles)}, but the data bundle has {sorted(groups)}")
    for group, (x, y) in groups.items():
        gather_tiles(partial, group, tiles[group], model, x, y, kind=kind, tile_size=tile_size, block_size=block_size,
                     attrs=attrs, device=dev, **engine_options(kind, options))
    check_kernel_file(partial, kind, options, model, bundle)
    os.replace(partial, out_path)
