"""Tiny MNIST-format (IDX) files for the data-loading tests."""
import gzip
import struct

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding: two zero bytes, dtype code 0x08 (uint8), ndim, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder, n_train=6, n_test=4, gz=True):
    """The four MNIST files in ``folder``, raw or gzipped; returns (images, labels) by prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {"train": np.arange(n_train * 28 * 28).reshape(n_train, 28, 28) % 256,
              "t10k": (np.arange(n_test * 28 * 28).reshape(n_test, 28, 28) * 3) % 256}
    labels = {"train": np.arange(n_train) % 3, "t10k": np.arange(n_test) % 3}
    for prefix in ("train", "t10k"):
        for kind, arr in (("images-idx3-ubyte", images[prefix]), ("labels-idx1-ubyte", labels[prefix])):
            name = f"{prefix}-{kind}"
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as fh:
                    fh.write(idx_bytes(arr))
            else:
                (folder / name).write_bytes(idx_bytes(arr))
    return images, labels
