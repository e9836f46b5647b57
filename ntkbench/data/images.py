"""Real image data sets read from their standard files: MNIST, Fashion-MNIST, CIFAR-10.

Nothing is downloaded (compute nodes are often offline): the files must already be in the
configured ``data_dir``. A missing file stops the run with its expected path and where to
get it. Pixels are scaled to [0, 1] and images are channels-first (N, C, H, W).

Accepted layouts under ``data_dir`` (first match wins):

- MNIST: ``mnist/``, ``MNIST/raw/`` (torchvision), or ``data_dir`` itself, holding
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``). The dotted spellings of
  some copies (``train-images.idx3-ubyte``, ...) are accepted too. A gzipped file without
  the ``.gz`` suffix is read (and said in the log); a raw file and its ``.gz`` side by side
  are both read, and refused unless their contents are equal.
- Fashion-MNIST: the same file names under ``fashion-mnist/``, ``fmnist/`` or
  ``FashionMNIST/raw/``.
- CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch`` (the python-pickle release), or those six files directly in ``data_dir``.
  They are read through a restricted unpickler that can build nothing but numpy arrays (a
  pickle is code: a tampered batch file could otherwise run anything on load).

``normalize`` (applied by :func:`ntkbench.data.load_dataset` after any poisoning, so a trigger
colour is given on the [0, 1] pixel scale): ``unit`` keeps pixels / 255; ``meanstd`` then
subtracts the per-channel mean and divides by the per-channel std: for CIFAR-10 those the
reference code of paper 001 used for ResNet18 (pnnl/projection_ntk ``process_Cifar10``: the
pretrained weights of Phan (2021) expect them), for MNIST 0.1307 / 0.3081 (dattri's benchmark).
The constants are stored in the bundle's ``meta["normalize"]`` so a figure can undo them.
"""
from __future__ import annotations

import codecs
import gzip
import math
import pickle
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ntkbench.data import DataBundle, Split
from ntkbench.utils import get_logger

__all__ = ["read_idx", "load_mnist", "load_fmnist", "load_cifar10", "normalize_bundle",
           "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD", "FMNIST_MEAN", "FMNIST_STD", "MEANSTD",
           "LOADERS"]

_LOG = get_logger(__name__)
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
              "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
_SOURCES = {
    "mnist": ("MNIST", ("mnist", "MNIST/raw", "."),
              "http://yann.lecun.com/exdb/mnist/ (or torchvision.datasets.MNIST(root, download=True))"),
    "fmnist": ("Fashion-MNIST", ("fashion-mnist", "fmnist", "FashionMNIST/raw"),
               "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz)"),
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpack it into data_dir)"
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
# Per-channel (R, G, B) mean and std of the CIFAR-10 training images on the [0, 1] scale, as the
# reference code of paper 001 normalised them for ResNet18 (pnnl/projection_ntk,
# scripts/resnet18/utils2.py ``process_Cifar10``; the constants of Phan's PyTorch_CIFAR10).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
# MNIST's and Fashion-MNIST's training-set mean and std on the [0, 1] scale: the constants of
# torchvision's examples and of dattri's MNIST benchmark (transforms.Normalize((0.1307,), (0.3081,))).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
#: (mean, std) per channel that ``normalize: meanstd`` uses, by data set.
MEANSTD = {"mnist": (MNIST_MEAN, MNIST_STD), "fmnist": (FMNIST_MEAN, FMNIST_STD),
           "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or raw, as an array of its stored shape.

    The header is checked in full before the data are interpreted: two zero bytes, a known data-type
    code, at least one dimension, every size below 2**31 (the format's sizes are signed 32-bit
    integers), and sizes x item size equal to the body's length (in Python integers, so a
    garbage header cannot overflow into a plausible or negative count). A file without the
    ``.gz`` suffix that starts with the gzip signature is decompressed anyway, with an INFO log
    line: the two signatures cannot be confused (a raw IDX file starts with two zero bytes).

    Raises ``ValueError`` naming the file and what is wrong for a bad header, a truncated or
    oversized body, or corrupt gzip data, and ``FileNotFoundError`` when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    return _decode_idx(path, _read_idx_bytes(path))


def _read_idx_bytes(path: Path) -> bytes:
    """The decompressed bytes of ``path`` (gzip by suffix, or by signature without one)."""
    compressed = path.suffix == ".gz"
    raw = path.read_bytes()
    if not compressed and raw[:2] == _GZIP_MAGIC:
        _LOG.info("%s is gzip-compressed but has no .gz suffix; reading it decompressed "
                  "(rename it to %s.gz to silence this)", path, path)
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path} is gzip-compressed but has no .gz suffix, and cannot be decompressed "
                             f"({type(err).__name__}: {err}); the file is corrupt or incomplete, "
                             "download it again") from err
    if not compressed:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        hint = "the .gz file is corrupt or incomplete, download it again"
        if raw[:2] == b"\0\0":
            hint = "it is not gzip-compressed at all but looks like a raw IDX file; remove the .gz suffix"
        raise ValueError(f"{path}: cannot decompress ({type(err).__name__}: {err}); {hint}") from err


def _decode_idx(path: Path, raw: bytes) -> np.ndarray:
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file ({len(raw)} bytes, shorter than the 4-byte magic number)")
    magic = raw[:4].hex()
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic number {magic} does not start with two zero bytes)")
    if raw[2] not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02x}" for code in _IDX_DTYPES)
        raise ValueError(f"{path}: not an IDX file (magic number {magic} has data type code 0x{raw[2]:02x}; "
                         f"known codes: {known})")
    ndim = raw[3]
    if ndim == 0:
        raise ValueError(f"{path}: magic number {magic} says ndim 0; an IDX file has at least one dimension")
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, a {ndim}-D header "
                         f"needs {header_bytes}); the file is incomplete, download it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    for i, size in enumerate(shape):
        if size >= 1 << 31:
            raise ValueError(f"{path}: header (ndim {ndim} in magic number {magic}) gives dimension {i} the "
                             f"size {size}, negative as the format's signed 32-bit integer; the header is "
                             "corrupt (or ndim is wrong)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = len(raw) - header_bytes
    values = math.prod(shape)  # Python ints: no overflow, however wrong the header
    expected = values * dtype.itemsize
    if body != expected:
        problem = "truncated?" if body < expected else "trailing data?"
        raise ValueError(f"{path}: header (ndim {ndim} in magic number {magic}) says shape {shape}, "
                         f"{values:,} values x {dtype.itemsize} bytes = {expected:,} bytes, but the file "
                         f"holds {body:,} bytes after the header ({problem} or a wrong ndim byte)")
    data = np.frombuffer(raw, dtype=dtype, offset=header_bytes)
    return data.reshape(shape)


def _spellings(stem: str) -> tuple[str, ...]:
    """``train-images-idx3-ubyte`` and its dotted spelling ``train-images.idx3-ubyte``."""
    prefix, _, suffix = stem.rpartition("-idx")
    return (stem, f"{prefix}.idx{suffix}")


def _read_idx_file(data_dir: Path, dataset: str, stem: str) -> np.ndarray:
    """The array of one data-set file, found as the module docstring says (first match wins).

    When a folder holds both the raw file and its ``.gz``, both are read: equal contents use
    the raw file (logged, naming both), different contents are refused, since which one the
    user meant cannot be guessed."""
    title, subdirs, url = _SOURCES[dataset]
    tried = []
    for sub in subdirs:
        for spelling in _spellings(stem):
            raw, packed = data_dir / sub / spelling, data_dir / sub / (spelling + ".gz")
            tried += [raw, packed]
            present = [p for p in (raw, packed) if p.is_file()]
            if len(present) == 1:
                return read_idx(present[0])
            if present:
                plain, unpacked = read_idx(raw), read_idx(packed)
                if plain.dtype != unpacked.dtype or not np.array_equal(plain, unpacked):  # shapes too
                    raise ValueError(
                        f"{title}: {raw} ({plain.dtype} {plain.shape}) and {packed} ({unpacked.dtype} "
                        f"{unpacked.shape}) both exist and their contents differ; delete the one that "
                        "is not the data set you mean")
                _LOG.info("%s and %s both exist with the same contents; reading %s", raw, packed, raw)
                return plain
    raise FileNotFoundError(
        f"{title} file {stem}[.gz] not found (nor {_spellings(stem)[1]}[.gz]); looked for "
        f"{', '.join(str(p) for p in tried)}. Download it from {url} into "
        f"{data_dir / subdirs[0]} (config key data_dir, e.g. --config data_dir=/path/to/data)."
    )


def _select(x: np.ndarray, y: np.ndarray, classes: Sequence[int] | None, size: int | None,
            per_class: int | None, rng: np.random.Generator, num_classes: int, split: str,
            first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``classes`` (relabelled 0..k-1 in the order given), then one of: a random subset of
    ``size``, the first ``per_class`` images of every class in file order, or the first
    ``first`` images in file order."""
    if classes is not None:
        keep = np.isin(y, classes)
        remap = np.full(num_classes, -1, dtype=np.int64)
        remap[list(classes)] = np.arange(len(classes))
        x, y = x[keep], remap[y[keep]]
    given = [key for key, value in ((f"max_{split}", size), (f"per_class_{split}", per_class),
                                    (f"first_{split}", first)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"data: {' and '.join(given)} exclude each other (max_: a random subset; "
                         "per_class_: the first images of each class; first_: the first images in "
                         "file order); give one")
    if first is not None:
        if first > len(y):
            raise ValueError(f"data.first_{split}: asked for the first {first} images but only {len(y)} "
                             "are available")
        x, y = x[:first], y[:first]
    if size is not None:
        if size > len(y):
            raise ValueError(f"data.max_{split}: asked for {size} images but only {len(y)} are available")
        idx = np.sort(rng.choice(len(y), size=size, replace=False))
        x, y = x[idx], y[idx]
    if per_class is not None:
        # Class blocks in label order (the order of ``classes``), file order within each block,
        # as the reference code builds its balanced MNIST2 sets.
        blocks = []
        for label in range(num_classes if classes is None else len(classes)):
            found = np.flatnonzero(y == label)
            if len(found) < per_class:
                original = classes[label] if classes is not None else label
                raise ValueError(f"data.per_class_{split}: asked for {per_class} images of class "
                                 f"{original} but the {split} file has only {len(found)}")
            blocks.append(found[:per_class])
        idx = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
        x, y = x[idx], y[idx]
    return x, y


def _bundle(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
            classes: Sequence[int] | None, max_train: int | None, max_test: int | None,
            split_seed: int, num_classes: int, per_class_train: int | None = None,
            per_class_test: int | None = None, first_train: int | None = None,
            first_test: int | None = None) -> DataBundle:
    if classes is not None:
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes) or len(classes) < 2 or not set(classes) <= set(range(num_classes)):
            raise ValueError(f"data.classes: need at least two distinct classes in 0..{num_classes - 1}, "
                             f"got {classes}")
    for key, value in (("per_class_train", per_class_train), ("per_class_test", per_class_test),
                       ("first_train", first_train), ("first_test", first_test)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ValueError(f"data.{key} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(split_seed)
    train_x, train_y = _select(*train, classes, max_train, per_class_train, rng, num_classes, "train", first_train)
    test_x, test_y = _select(*test, classes, max_test, per_class_test, rng, num_classes, "test", first_test)
    to_float = lambda a: a.astype(np.float32) / 255.0  # noqa: E731 - uint8 pixels to [0, 1]
    meta = {"name": name, "classes": classes, "max_train": max_train, "max_test": max_test,
            "split_seed": split_seed, "n_train": len(train_y), "n_test": len(test_y)}
    if per_class_train is not None or per_class_test is not None:
        meta.update(per_class_train=per_class_train, per_class_test=per_class_test)
    if first_train is not None or first_test is not None:
        meta.update(first_train=first_train, first_test=first_test)
    return DataBundle(
        train=Split(to_float(train_x), train_y.astype(np.int64)),
        test=Split(to_float(test_x), test_y.astype(np.int64)),
        num_classes=num_classes if classes is None else len(classes),
        meta=meta,
    )


def _reject_unknown(name: str, unknown: dict[str, Any]) -> None:
    # These data sets come with a fixed train/test split, so e.g. test_fraction has no meaning.
    if unknown:
        raise ValueError(f"data: key(s) {sorted(unknown)} do not apply to {name!r} "
                         "(accepted: classes, max_train, max_test, per_class_train, per_class_test, "
                         "first_train, first_test, split_seed)")


def _load_idx_dataset(dataset: str, data_dir: Path, classes: Sequence[int] | None,
                      max_train: int | None, max_test: int | None, split_seed: int,
                      per_class_train: int | None, per_class_test: int | None,
                      first_train: int | None = None, first_test: int | None = None) -> DataBundle:
    arrays = {key: _read_idx_file(Path(data_dir), dataset, stem) for key, stem in _IDX_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{_SOURCES[dataset][0]} {split}: images {x.shape} and labels {y.shape} "
                             "do not match (expected (N, H, W) and (N,))")
    return _bundle(dataset, (arrays["train_x"][:, None], arrays["train_y"].astype(np.int64)),
                   (arrays["test_x"][:, None], arrays["test_y"].astype(np.int64)),
                   classes, max_train, max_test, split_seed, num_classes=10,
                   per_class_train=per_class_train, per_class_test=per_class_test,
                   first_train=first_train, first_test=first_test)


def load_mnist(data_dir: Path, classes: Sequence[int] | None = None, max_train: int | None = None,
               max_test: int | None = None, split_seed: int = 0, per_class_train: int | None = None,
               per_class_test: int | None = None, first_train: int | None = None,
               first_test: int | None = None, **unknown: Any) -> DataBundle:
    """MNIST (N, 1, 28, 28), pixels / 255, with its standard 60k/10k split.

    ``classes`` restricts and relabels (e.g. [0, 1] = MNIST2); ``max_train``/``max_test`` keep
    a random subset of that size (drawn with ``split_seed``), for quick runs.
    ``per_class_train``/``per_class_test`` keep instead the first ``n`` images of every class
    in file order, grouped by class in the order of ``classes`` — the reference code's balanced
    MNIST2 split is ``classes=[0, 1], per_class_train=5000, per_class_test=980``.
    ``first_train``/``first_test`` keep the first ``n`` images in file order (dattri's MNIST-10
    benchmark: 5000 and 500).
    """
    _reject_unknown("mnist", unknown)
    return _load_idx_dataset("mnist", data_dir, classes, max_train, max_test, split_seed,
                             per_class_train, per_class_test, first_train, first_test)


def load_fmnist(data_dir: Path, classes: Sequence[int] | None = None, max_train: int | None = None,
                max_test: int | None = None, split_seed: int = 0, per_class_train: int | None = None,
                per_class_test: int | None = None, first_train: int | None = None,
                first_test: int | None = None, **unknown: Any) -> DataBundle:
    """Fashion-MNIST, same format and arguments as :func:`load_mnist`."""
    _reject_unknown("fmnist", unknown)
    return _load_idx_dataset("fmnist", data_dir, classes, max_train, max_test, split_seed,
                             per_class_train, per_class_test, first_train, first_test)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR-10 batch pickle may name, keyed by (module, name).

    Taken from numpy's own reduce protocol, so they are right for the installed numpy; the
    module names cover the files as released (Python 2 cPickle, ``numpy.core``), pickles
    written by numpy >= 2 (``numpy._core``) and protocol 5 (``_frombuffer``).
    """
    probe = np.zeros(1, dtype=np.uint8)
    reconstruct = probe.__reduce__()[0]        # numpy's multiarray._reconstruct
    frombuffer = probe.__reduce_ex__(5)[0]     # numpy's numeric._frombuffer (protocol 5)
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _plain_dtype(*args: Any) -> np.dtype:
    # An object dtype would let the array's state carry arbitrary Python objects.
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing an object dtype ({dtype}) in a CIFAR-10 batch")
    return dtype


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy array reconstruction."""

    def __init__(self, fh: Any, path: Path) -> None:
        super().__init__(fh, encoding="bytes")
        self._path = path
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._path}: refusing to load {module}.{name}: a CIFAR-10 batch holds only "
                "numpy arrays, lists and strings (is this file what it claims to be?)") from None


def _cifar_dir(data_dir: Path) -> Path:
    """``data_dir/cifar-10-batches-py`` (the unpacked tarball), else ``data_dir`` itself when it
    holds the batch files; names the first missing file and where to get it otherwise."""
    candidates = (data_dir / "cifar-10-batches-py", data_dir)
    for root in candidates:
        if (root / "data_batch_1").is_file():
            for name in _CIFAR_FILES:
                if not (root / name).is_file():
                    raise FileNotFoundError(
                        f"CIFAR-10 file {root / name} not found (the other batches are there). "
                        f"Download {_CIFAR_URL} so that {candidates[0]} holds "
                        f"{', '.join(_CIFAR_FILES)} (config key data_dir, e.g. --config data_dir=/path/to/data).")
            return root
    raise FileNotFoundError(
        f"CIFAR-10 file data_batch_1 not found in {candidates[0]} nor in {data_dir}. Download "
        f"{_CIFAR_URL} so that {candidates[0]} holds {', '.join(_CIFAR_FILES)} "
        "(config key data_dir, e.g. --config data_dir=/path/to/data).")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-pickle batch: images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file {path} not found. Download {_CIFAR_URL} "
                                f"so that {path.parent} exists (config key data_dir).")
    try:
        with open(path, "rb") as fh:
            batch = _NumpyOnlyUnpickler(fh, path).load()
    except pickle.UnpicklingError as err:
        if "refusing" in str(err):  # a forbidden global or dtype: say so, do not call it corrupt
            raise pickle.UnpicklingError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
        raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({err}); the file is "
                         "corrupt or incomplete, download it again") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({type(err).__name__}: {err}); "
                         "the file is corrupt or incomplete, download it again") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (a {type(batch).__name__}, expected a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no 'data'/'labels' entries)")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ValueError(f"{path}: data {data.dtype} {data.shape} / labels {labels.shape}, "
                         "expected uint8 (N, 3072) / (N,)")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    # Rows are stored channel-major (1024 red, 1024 green, 1024 blue, each row-major 32 x 32),
    # i.e. already (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(data_dir: Path, classes: Sequence[int] | None = None, max_train: int | None = None,
                 max_test: int | None = None, split_seed: int = 0, per_class_train: int | None = None,
                 per_class_test: int | None = None, first_train: int | None = None,
                 first_test: int | None = None, **unknown: Any) -> DataBundle:
    """CIFAR-10 (N, 3, 32, 32) float32 RGB in [0, 1], 50000 train / 10000 test images.

    Reads ``data_dir/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (or those files in
    ``data_dir``). ``classes``, ``max_*``, ``per_class_*`` and ``first_*`` select as for
    :func:`load_mnist`.
    Normalisation beyond / 255 (config ``normalize``) is applied by ``load_dataset``.
    """
    _reject_unknown("cifar10", unknown)
    root = _cifar_dir(Path(data_dir))
    batches = [_read_cifar_batch(root / name) for name in _CIFAR_FILES[:5]]
    train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    test = _read_cifar_batch(root / "test_batch")
    return _bundle("cifar10", train, test, classes, max_train, max_test, split_seed, num_classes=10,
                   per_class_train=per_class_train, per_class_test=per_class_test,
                   first_train=first_train, first_test=first_test)


NORMALIZATIONS = ("unit", "meanstd")


def normalize_bundle(bundle: DataBundle, mode: str) -> DataBundle:
    """Per-channel normalisation of an image bundle whose pixels are on the [0, 1] scale.

    ``unit`` returns the bundle as it is; ``meanstd`` maps x -> (x - mean_c) / std_c with the
    data set's constants (:data:`MEANSTD`: CIFAR-10's of the reference code, MNIST's
    0.1307 / 0.3081, Fashion-MNIST's 0.2860 / 0.3530) on every split (train, test and extra
    splits), and records them in ``meta["normalize"]`` so x can be mapped back.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"data.normalize: {mode!r} is not one of {list(NORMALIZATIONS)}")
    if mode == "unit":
        return replace(bundle, meta={**bundle.meta, "normalize": {"mode": "unit"}})
    name = bundle.meta.get("name")
    if name not in MEANSTD:
        raise ValueError(f"data.normalize: meanstd has constants for {sorted(MEANSTD)}, not {name!r}")
    mean_c, std_c = MEANSTD[name]
    channels = bundle.input_shape[0] if bundle.input_shape else 0
    if len(bundle.input_shape) != 3 or channels != len(mean_c):
        raise ValueError(f"data.normalize: meanstd for {name} needs (N, {len(mean_c)}, H, W) images, got input "
                         f"shape {bundle.input_shape}")
    mean = torch.tensor(mean_c, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std_c, dtype=torch.float32).view(1, -1, 1, 1)
    norm = lambda s: Split((s.x - mean) / std, s.y)  # noqa: E731
    return replace(bundle, train=norm(bundle.train), test=norm(bundle.test),
                   extra_splits={k: norm(s) for k, s in bundle.extra_splits.items()},
                   meta={**bundle.meta, "normalize": {"mode": "meanstd", "mean": list(mean_c),
                                                      "std": list(std_c)}})


LOADERS: dict[str, Callable[..., DataBundle]] = {
    "mnist": load_mnist,
    "fmnist": load_fmnist,
    "cifar10": load_cifar10,
}
