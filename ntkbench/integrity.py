"""Content checksums of stored artifacts, and the error a damaged one raises.

Every artifact a stage reads is verified when it is read, so bit-rot, a half-copied file or a
hand edit becomes a clear error instead of a wrong number:

- torch checkpoints (``model.pt``, training checkpoints) carry a SHA-256 of their whole content
  (weights, spec and extras; :func:`save_torch` / :func:`load_torch`), since torch's zip reader
  does not check the CRCs of what it reads;
- ``.npz`` bundles are zip archives whose members carry CRC-32s, which :func:`load_npz` checks
  by reading every member in full;
- kernel HDF5 datasets carry the ``fletcher32`` filter, checked by HDF5 on every chunk read
  (``ntkbench.store``).

A damaged file raises :class:`CorruptFileError`, whose message names the file, what is wrong
with it and how to recompute it (:func:`recompute_hint`); such files are for the user to delete,
never deleted silently.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ntkbench.utils import atomic_path

__all__ = [
    "CorruptFileError",
    "CHECKSUM_KEY",
    "content_sha256",
    "save_torch",
    "load_torch",
    "load_npz",
    "recompute_hint",
    "producing_rule",
]

# The key of a checkpoint's content hash (its value is over everything else in the dict).
CHECKSUM_KEY = "sha256"

# When Snakemake's own record of a file is not at hand: result files and the rule that writes
# them, so that a damaged file's error can still say which rule recomputes it. First match wins.
_PRODUCERS: tuple[tuple[str, str], ...] = (
    (r"(^|/)[^/]+/data\.npz$", "prepare_data"),
    (r"/seed\d+/(model\.pt|logits\.npz|training\.csv)$", "train"),
    (r"/seed\d+/kernels/[^/]+\.tiles/[^/]+\.h5$", "kernel_tile"),
    (r"/seed\d+/kernels/[^/]+\.h5$", "kernel (kernel_gather when kernels are tiled)"),
    (r"/seed\d+/kglm/[^/@]+@[^/]+\.(json|npz)$", "kglm_variant"),
    (r"/seed\d+/kglm/[^/]+\.(json|npz)$", "kglm"),
    (r"/seed\d+/(checkpoints\.pt|training_curve\.csv)$", "modadd_train (tf_train for a transformer)"),
    (r"/seed\d+/class_avg_spectra\.npz$", "modadd_spectra"),
    (r"/seed\d+/full_entk_top\.npz$", "modadd_full_entk"),
    (r"/attribution/subsets/[^/]+\.npz$", "attribution_subsets"),
    (r"/attribution/gradients\.npz$", "attribution_gradients"),
    (r"/attribution/mislabel\.(npz|json)$", "attribution_mislabel"),
    (r"/attribution/attribution\.csv$", "attribution_lds"),
    (r"(^|/)attribution\.(csv|md|png)$", "attribution_table"),
    (r"/analysis/", "analysis"),
    (r"/(forensics[^/]*|attack)\.(csv|md|png)$", "forensics"),
    (r"(^|/)tms/runs/[^/]+/(model\.pt|loss\.csv)$", "tms_train"),
    (r"(^|/)tms/runs/[^/]+/spectrum\.npz$", "tms_spectrum"),
    (r"(^|/)summary[^/]*\.(csv|md|png)$", "summary"),
)

# Snakemake's record of every output it wrote: .snakemake/metadata/<urlsafe base64 of the path
# relative to the working directory>, a JSON object naming the rule.
_SNAKEMAKE_METADATA = Path(".snakemake") / "metadata"


class CorruptFileError(ValueError):
    """A stored artifact is damaged or not what it claims to be. The message names the file,
    what is wrong with it, and how to recompute it."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}. {recompute_hint(path)}")


def producing_rule(path: str | os.PathLike, workdir: str | os.PathLike | None = None) -> str | None:
    """The workflow rule that writes ``path`` (a file under ``results/``), or None if unknown.

    Snakemake's own record of the file, under ``<workdir>/.snakemake/metadata`` (``workdir``
    defaults to the current directory, where Snakemake runs every job), comes first; without
    it, the rule is read off the results layout.
    """
    workdir = Path.cwd() if workdir is None else Path(workdir)
    try:
        rel = Path(os.path.relpath(Path(path).resolve(), workdir.resolve())).as_posix()
        record = workdir / _SNAKEMAKE_METADATA / base64.urlsafe_b64encode(rel.encode()).decode()
        if not rel.startswith("..") and len(record.name) < 255 and record.is_file():
            rule = json.loads(record.read_text()).get("rule")
            if isinstance(rule, str) and rule:
                return rule
    except (OSError, ValueError):  # no record, or an unreadable one: fall back to the layout
        pass
    posix = Path(path).as_posix()
    for pattern, rule in _PRODUCERS:
        if re.search(pattern, posix):
            return rule
    return None


def recompute_hint(path: str | os.PathLike, workdir: str | os.PathLike | None = None) -> str:
    """How to recompute ``path``: delete it and rerun (and, when known, the ``--forcerun`` rule;
    see :func:`producing_rule`)."""
    rule = producing_rule(path, workdir)
    hint = f"To recompute it, delete it (rm '{path}') and rerun the workflow (make run, or snakemake)"
    if rule is not None:
        hint += f"; or rerun its rule with snakemake --forcerun {rule.split()[0]}"
    return hint + "; what depends on it reruns too"


# ----------------------------------------------------------------------------- content hash
def _update(digest: "hashlib._Hash", obj: Any) -> None:
    """Feed a canonical, type-tagged encoding of ``obj`` to ``digest`` (dict keys sorted)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        digest.update(f"A|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    elif isinstance(obj, Mapping):
        digest.update(f"D|{len(obj)}|".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _update(digest, key)
            _update(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L|{len(obj)}|".encode())
        for item in obj:
            _update(digest, item)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, np.generic, torch.dtype, torch.Size)):
        digest.update(f"S|{type(obj).__name__}|{obj!r}|".encode())
    else:
        raise TypeError(f"cannot checksum a {type(obj).__name__}; checkpoints hold tensors, arrays, "
                        "numbers, strings and dicts/lists of them")


def content_sha256(obj: Any) -> str:
    """SHA-256 (hex) of a nested structure of tensors, arrays, numbers, strings, dicts and lists.

    Lists and tuples hash alike, so a value survives a save/load round trip that turns one into
    the other.
    """
    digest = hashlib.sha256()
    _update(digest, obj)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- torch files
def save_torch(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    """``torch.save`` a dict atomically, with :data:`CHECKSUM_KEY` holding its content hash."""
    if CHECKSUM_KEY in obj:
        raise ValueError(f"save_torch: {CHECKSUM_KEY!r} is reserved for the checksum")
    payload = {**obj, CHECKSUM_KEY: content_sha256(obj)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """A dict written by :func:`save_torch`, its content hash verified.

    Raises FileNotFoundError when ``path`` does not exist and :class:`CorruptFileError` (naming
    the file) when it cannot be read, is not such a dict, has no checksum, or its content does
    not match the checksum.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist (run the stage that writes it first)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError, zipfile.BadZipFile, pickle.UnpicklingError, zlib.error) as err:
        size = path.stat().st_size
        raise CorruptFileError(path, f"not a readable {what} ({size} bytes; truncated or corrupt? "
                                     f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''})") from err
    if not isinstance(obj, dict):
        raise CorruptFileError(path, f"not an ntkbench {what} (holds a {type(obj).__name__}, not a dict)")
    stored = obj.pop(CHECKSUM_KEY, None)
    if stored is None:
        raise CorruptFileError(path, f"the {what} carries no content checksum (written by an older ntkbench, "
                                     "or not by ntkbench), so its weights cannot be verified")
    try:
        actual = content_sha256(obj)
    except TypeError as err:
        raise CorruptFileError(path, f"unexpected content in the {what}: {err}") from err
    if actual != stored:
        raise CorruptFileError(path, f"the {what}'s content does not match its checksum (stored SHA-256 "
                                     f"{str(stored)[:16]}..., content hashes to {actual[:16]}...): the file is damaged")
    return obj


# ----------------------------------------------------------------------------- npz files
def load_npz(path: str | os.PathLike, what: str = "npz file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, each member's zip CRC-32 checked (pickles refused).

    Raises FileNotFoundError when ``path`` does not exist and :class:`CorruptFileError` naming
    the file (and the member) when it cannot be read or a CRC does not match.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist (run the stage that writes it first)")
    member = None
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {}
            for member in npz.files:
                out[member] = npz[member]  # reads the member in full, which checks its CRC-32
            return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        where = f" (member {member}.npy)" if member is not None else ""
        raise CorruptFileError(path, f"not a readable {what}{where}: {type(err).__name__}: {err}") from err
