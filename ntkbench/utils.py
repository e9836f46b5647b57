"""Small shared utilities: devices, seeds, atomic writes, code fingerprints, logging."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

__all__ = [
    "resolve_device",
    "seed_everything",
    "atomic_path",
    "atomic_write_text",
    "atomic_savez",
    "code_fingerprint",
    "get_logger",
    "setup_logging",
]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a config device string into a usable torch.device.

    ``"auto"`` (or None) picks CUDA when it is available, else CPU, so one config runs on a
    laptop and on a GPU node unchanged. Raises ValueError naming the device for an invalid
    name, CUDA / MPS where it is not available, a CUDA index that does not exist, or ``meta``
    (which holds shapes, not values).
    """
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"device {spec!r} is not a valid torch device: {err}") from err
    if dev.type == "meta":
        raise ValueError(f"device {str(dev)!r} holds no values, so nothing can be computed there; use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(dev)!r} requested but CUDA is not available on this machine; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(dev)!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(dev)!r} requested but MPS is not available on this machine; use 'cpu'")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way.

    Training code draws its shuffles from the returned generator rather than global state, so
    the same seed gives the same numbers whatever else ran before in the process.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    An interrupted job therefore never leaves a file that Snakemake (or a reader) would take
    as finished. The temporary name keeps the extension, since some writers (matplotlib,
    pandas) pick the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file() and not tmp_path.is_symlink():
            # mkstemp creates 0600 whatever the umask; give the result the mode any other
            # new file gets (0666 & ~umask), so collaborators can read shared results.
            os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object, so numpy keeps the temporary name
            np.savez(fh, **arrays)


def code_fingerprint(*paths: str | os.PathLike) -> str:
    """Short hash of the source files under ``paths`` (files or directories of ``*.py``).

    Snakemake does not track imported library code; rules pass this as a ``params`` value so
    a change to a stage's code reruns that stage (and only that stage).
    """
    digest = hashlib.sha256()
    for root in sorted(str(p) for p in paths):
        root_path = Path(root)
        if not root_path.exists():
            raise FileNotFoundError(f"code_fingerprint: {root_path} does not exist")
        files = [root_path] if root_path.is_file() else sorted(root_path.rglob("*.py"))
        for file in files:
            digest.update(file.as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def get_logger(name: str) -> logging.Logger:
    """The module logger. Handlers are configured once per process by :func:`setup_logging`
    (workflow scripts) or by the user's application, never by the library itself."""
    return logging.getLogger(name)


def setup_logging(log_path: str | os.PathLike | None, threads: int | None = None) -> logging.Logger:
    """Configure a workflow script: log to ``log_path`` (Snakemake's ``log:``) and set threads.

    Returns the root logger. Uncaught exceptions end up in the log too, so a failed job's log
    says why it failed.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    root = logging.getLogger()

    def excepthook(exc_type, exc, tb):  # noqa: ANN001
        root.error("job failed", exc_info=(exc_type, exc, tb))

    sys.excepthook = excepthook
    if threads:
        torch.set_num_threads(int(threads))
    return root
