"""``make verify``: check every artifact under a results directory against its checksum and
provenance, and list what to recompute (the project's ``scrub``).

Checks, file by file (read-only; nothing is ever deleted):

- ``*.pt``: the checkpoint's SHA-256 (:func:`ntkbench.integrity.load_torch`); a ``model.pt``
  must also rebuild its network from its spec;
- ``*.npz``: every member's zip CRC-32; a ``data.npz`` must be a consistent data bundle, and a
  ``logits.npz`` must be reproduced by the ``model.pt`` beside it on a few dozen training
  points and belong to the experiment's ``data.npz``;
- ``*.h5`` kernels: every group finished, every value dataset carrying its fletcher32
  checksum and matching it (all chunks read), values finite, and its provenance: the model
  and data fingerprints of the ``model.pt`` and ``data.npz`` it was computed from;
- ``*.json`` and ``*.csv``: readable (they carry no checksum of their own).

Unfinished ``*.partial`` files are reported as such (the workflow resumes or discards them).
Logs and Snakemake benchmark files are skipped. Exit status 1 when anything is damaged.

Usage: ``python -m ntkbench.stages.verify [results]``
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import pandas as pd

from ntkbench import models, store
from ntkbench.data import DataBundle, load_bundle
from ntkbench.integrity import CorruptFileError, load_npz, load_torch, recompute_hint
from ntkbench.stages.common import logits_mismatch

__all__ = ["Finding", "verify_results", "main"]

SKIPPED_DIRS = ("logs", "benchmarks", ".snakemake")
ROW_BLOCK = 4096


@dataclass(frozen=True)
class Finding:
    """One damaged (or unfinished) file: what is wrong and how to recompute it."""

    path: Path
    problem: str
    remedy: str


class _Cache:
    """Bundles and models read once, however many files refer to them."""

    def __init__(self) -> None:
        self.bundles: dict[Path, DataBundle | Exception] = {}
        self.models: dict[Path, tuple | Exception] = {}

    def bundle(self, path: Path) -> DataBundle | None:
        if path not in self.bundles:
            try:
                self.bundles[path] = load_bundle(path)
            except (OSError, ValueError) as err:
                self.bundles[path] = err
        value = self.bundles[path]
        return None if isinstance(value, Exception) else value

    def model(self, path: Path):
        if path not in self.models:
            try:
                self.models[path] = models.load_checkpoint(path)
            except (OSError, ValueError) as err:
                self.models[path] = err
        value = self.models[path]
        return None if isinstance(value, Exception) else value


def _seed_dir(path: Path) -> Path | None:
    """``<experiment>/seed<k>/`` of a file inside it (its parent holds ``data.npz``), if it is one."""
    for parent in path.parents:
        if parent.name.startswith("seed") and parent.name[4:].isdigit():
            return parent
    return None


def _check_pt(path: Path, cache: _Cache) -> None:
    if path.name == "model.pt":
        if cache.model(path) is None:
            raise cache.models[path]  # type: ignore[misc]
    else:
        load_torch(path, what="checkpoint file")


def _check_npz(path: Path, cache: _Cache) -> None:
    if path.name == "data.npz":
        if cache.bundle(path) is None:
            raise cache.bundles[path]  # type: ignore[misc]
        return
    arrays = load_npz(path)
    seed_dir = _seed_dir(path)
    if path.name == "logits.npz" and seed_dir is not None:
        model_path, data_path = seed_dir / "model.pt", seed_dir.parent / "data.npz"
        bundle = cache.bundle(data_path) if data_path.exists() else None
        loaded = cache.model(model_path) if model_path.exists() else None
        if bundle is None or loaded is None:
            return  # reported with those files (or they are absent: nothing to compare)
        train = arrays.get("train_logits")
        labels = arrays.get("train_y")
        if train is None or labels is None or len(train) != len(bundle.train) \
                or not np.array_equal(labels, bundle.train.y.numpy()):
            raise CorruptFileError(path, f"the logits do not belong to {data_path} (another data bundle)")
        why = logits_mismatch(loaded[0], bundle, arrays)
        if why is not None:
            raise CorruptFileError(path, f"not the logits of the network {model_path} ({why})")


def _check_h5(path: Path, cache: _Cache) -> None:
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise CorruptFileError(path, f"not a readable HDF5 file ({err})") from err
    with f:
        groups = [name for name, obj in f.items() if isinstance(obj, h5py.Group) and "kernel" in obj]
        if not groups:
            raise CorruptFileError(path, f"no kernel group in the file (has {sorted(f.keys())})")
        for name in groups:
            grp = f[name]
            if not bool(store.decode_attr(grp.attrs.get("complete", False))):
                raise CorruptFileError(path, f"group {name}: the computation did not finish (complete = False)")
            store.require_checksums(path, name, grp)
            for d in store.VALUE_DATASETS:
                if d not in grp:
                    continue
                ds = grp[d]
                for r0 in range(0, max(ds.shape[0], 1), ROW_BLOCK):
                    values = store.read_dataset(ds, np.s_[r0 : r0 + ROW_BLOCK], path)
                    if not np.isfinite(values).all():
                        raise CorruptFileError(path, f"dataset {ds.name}: non-finite values in rows {r0}-{r0 + len(values) - 1}")
            _check_kernel_provenance(path, name, grp, cache)


def _check_kernel_provenance(path: Path, group: str, grp: h5py.Group, cache: _Cache) -> None:
    """The kernel was computed from the ``model.pt`` and ``data.npz`` it sits beside."""
    seed_dir = _seed_dir(path)
    if seed_dir is None:
        return
    model_path, data_path = seed_dir / "model.pt", seed_dir.parent / "data.npz"
    loaded = cache.model(model_path) if model_path.exists() else None
    if loaded is not None:
        stored, actual = store.decode_attr(grp.attrs.get("model_fingerprint")), store.model_fingerprint(loaded[0])
        if stored != actual:
            raise CorruptFileError(path, f"group {group} was computed from another network than {model_path} "
                                         f"(model fingerprint {stored}, the network's is {actual})")
    bundle = cache.bundle(data_path) if data_path.exists() else None
    if bundle is not None and group.endswith("_train"):
        split = group[: -len("_train")]
        rows = bundle.train if split == "train" else bundle.eval_splits.get(split)
        want = {"data_fingerprint_y": store.tensor_fingerprint(bundle.train.x)}
        if rows is not None:
            want["data_fingerprint_x"] = store.tensor_fingerprint(rows.x)
        for key, value in want.items():
            if store.decode_attr(grp.attrs.get(key)) != value:
                raise CorruptFileError(path, f"group {group} was computed on other data than {data_path} ({key} differs)")


def _check_json(path: Path, cache: _Cache) -> None:
    try:
        json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(path, f"not readable JSON ({err})") from err


def _check_csv(path: Path, cache: _Cache) -> None:
    try:
        pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return  # an empty table is a valid result
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise CorruptFileError(path, f"not a readable CSV table ({err})") from err


CHECKS: dict[str, Callable[[Path, _Cache], None]] = {
    ".pt": _check_pt, ".npz": _check_npz, ".h5": _check_h5, ".json": _check_json, ".csv": _check_csv,
}
# Models and bundles first: the files checked against them then reuse what was read.
_ORDER = {"model.pt": 0, "data.npz": 0, ".pt": 1, ".npz": 2, ".h5": 3}


def _artifacts(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or (rel.parts and rel.parts[0] in SKIPPED_DIRS) or path.name.startswith("."):
            continue
        if path.suffix in CHECKS or path.name.endswith(".partial"):
            yield path


def verify_results(root: str | Path, progress: Callable[[str], None] | None = None) -> tuple[int, list[Finding]]:
    """Check every artifact under ``root``; returns (files checked, findings), read-only.

    The rule that recomputes a damaged file is taken from Snakemake's records in the directory
    above ``root`` (the workflow's working directory), else from the results layout."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results directory {root} does not exist")
    workdir = root.resolve().parent  # where Snakemake ran: its records name each file's rule
    files = sorted(_artifacts(root), key=lambda p: (_ORDER.get(p.name, _ORDER.get(p.suffix, 4)), str(p)))
    cache, findings = _Cache(), []
    for i, path in enumerate(files, 1):
        if path.name.endswith(".partial"):
            findings.append(Finding(path, "unfinished (a job was interrupted)",
                                    "rerun the workflow: the job resumes from it, or discards it if its settings changed"))
            continue
        try:
            CHECKS[path.suffix](path, cache)
        except CorruptFileError as err:
            findings.append(Finding(path, err.problem, recompute_hint(path, workdir)))
        except (OSError, ValueError) as err:
            findings.append(Finding(path, f"{type(err).__name__}: {err}", recompute_hint(path, workdir)))
        if progress is not None and (i % 50 == 0 or i == len(files)):
            progress(f"verify: {i}/{len(files)} files checked, {len(findings)} damaged")
    return len(files), findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntkbench.stages.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default="results", help="the results directory (default: results)")
    args = parser.parse_args(argv)
    try:
        checked, findings = verify_results(args.results, progress=lambda m: print(m, file=sys.stderr))
    except FileNotFoundError as err:
        print(f"verify: {err}", file=sys.stderr)
        return 2
    for f in findings:
        print(f"DAMAGED {f.path}\n    what: {f.problem}\n    fix:  {f.remedy}")
    print(f"verify: {checked} files checked under {args.results}: "
          + (f"{len(findings)} to recompute (listed above; nothing was deleted)" if findings else "all intact"))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
