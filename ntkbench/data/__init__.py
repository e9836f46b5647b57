"""Data sets as plain tensors, with one on-disk format shared by every stage.

A :class:`DataBundle` holds a train and a test :class:`Split` (inputs ``x`` shaped
(N, *input_shape), integer labels ``y``) plus JSON-serialisable metadata. Stages exchange
bundles as ``.npz`` files written atomically.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntkbench.integrity import CorruptFileError, load_npz
from ntkbench.utils import atomic_savez

__all__ = ["Split", "DataBundle", "save_bundle", "load_bundle", "load_dataset"]


@dataclass
class Split:
    """One split of a data set: inputs (N, ...) float32 and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        self.x = torch.as_tensor(self.x, dtype=torch.float32)
        self.y = torch.as_tensor(self.y, dtype=torch.int64)
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class DataBundle:
    """Train and test splits of one task, with the number of classes and provenance."""

    train: Split
    test: Split
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. poisoned indices
    # Further evaluation splits beside ``test`` (e.g. "poisoned_test"); every stage that
    # evaluates on ``test`` also evaluates on these.
    extra_splits: dict[str, Split] = field(default_factory=dict)

    @property
    def eval_splits(self) -> dict[str, Split]:
        """All splits a trained model is evaluated on: ``test`` first, then the extra ones."""
        return {"test": self.test, **self.extra_splits}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_outputs(self) -> int:
        """Network outputs: one logit for binary tasks (sigmoid), else one per class."""
        return 1 if self.num_classes == 2 else self.num_classes

    @property
    def model_args(self) -> dict[str, Any]:
        """The model-constructor arguments the data dictate: ``input_shape``, ``num_outputs``, and
        whatever the loader put in ``meta["model_args"]`` (e.g. ``vocab_size`` for text)."""
        return {"input_shape": list(self.input_shape), "num_outputs": self.num_outputs,
                **self.meta.get("model_args", {})}


def save_bundle(bundle: DataBundle, path: str | Path) -> None:
    """Write a bundle to ``path`` (.npz) atomically."""
    arrays = {
        "train_x": bundle.train.x.numpy(),
        "train_y": bundle.train.y.numpy(),
        "test_x": bundle.test.x.numpy(),
        "test_y": bundle.test.y.numpy(),
        "num_classes": np.array(bundle.num_classes),
        "meta": np.array(json.dumps(bundle.meta, sort_keys=True)),
    }
    for key, value in bundle.extra.items():
        arrays[f"extra_{key}"] = np.asarray(value)
    for key, split in bundle.extra_splits.items():
        arrays[f"split_{key}_x"] = split.x.numpy()
        arrays[f"split_{key}_y"] = split.y.numpy()
    atomic_savez(path, **arrays)


def load_bundle(path: str | Path) -> DataBundle:
    """Read a bundle written by :func:`save_bundle`.

    Every member's CRC is checked (:func:`ntkbench.integrity.load_npz`); a damaged or foreign
    file raises :class:`ntkbench.integrity.CorruptFileError` naming the file and the member.
    """
    npz = load_npz(path, what="data bundle")
    missing = [k for k in ("train_x", "train_y", "test_x", "test_y", "num_classes", "meta") if k not in npz]
    if missing:
        raise CorruptFileError(path, f"not a data bundle written by ntkbench: missing array(s) {missing}; "
                                     f"has {sorted(npz)}")
    extra = {k[len("extra_"):]: npz[k] for k in npz if k.startswith("extra_")}
    split_names = [k[len("split_"):-len("_x")] for k in npz if k.startswith("split_") and k.endswith("_x")]
    try:
        extra_splits = {name: Split(torch.from_numpy(npz[f"split_{name}_x"]), torch.from_numpy(npz[f"split_{name}_y"]))
                        for name in split_names}
        return DataBundle(
            train=Split(torch.from_numpy(npz["train_x"]), torch.from_numpy(npz["train_y"])),
            test=Split(torch.from_numpy(npz["test_x"]), torch.from_numpy(npz["test_y"])),
            num_classes=int(npz["num_classes"]),
            meta=json.loads(str(npz["meta"])),
            extra=extra,
            extra_splits=extra_splits,
        )
    except (KeyError, ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        raise CorruptFileError(path, f"not a consistent data bundle ({type(err).__name__}: {err})") from err


def load_dataset(spec: dict[str, Any], data_dir: str | Path = "data") -> DataBundle:
    """Build the bundle a config ``data:`` block describes.

    ``spec["name"]`` picks the loader; the other keys are its arguments. Loaders for real data
    sets read their standard files from ``data_dir`` and name the missing file when absent.
    ``poison``, then ``label_noise``, then ``normalize`` (images, see
    :func:`ntkbench.data.images.normalize_bundle`) are applied to the loaded bundle in that order.
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    loaders = _loaders()
    if name not in loaders:
        raise ValueError(f"data.name: unknown data set {name!r}; choose one of {sorted(loaders)}")
    poison = spec.pop("poison", None)
    label_noise = spec.pop("label_noise", None)
    normalize = spec.pop("normalize", None)
    bundle = loaders[name](data_dir=Path(data_dir), **spec)
    if poison:
        from ntkbench.data.poison import poison_bundle

        bundle = poison_bundle(bundle, **poison)
    if label_noise:  # after poisoning: flips any training label, poisoned or not
        from ntkbench.data.label_noise import label_noise_bundle

        bundle = label_noise_bundle(bundle, **label_noise)
    if normalize is not None:  # last: poison colours are given on the [0, 1] pixel scale
        from ntkbench.data.images import normalize_bundle

        bundle = normalize_bundle(bundle, normalize)
    return bundle


def _loaders() -> dict[str, Any]:
    # Imported lazily so a missing optional loader never breaks the others.
    from ntkbench.data import digits

    loaders = {"digits": digits.load_digits_bundle}
    try:
        from ntkbench.data import images

        loaders.update(images.LOADERS)
    except ImportError:  # pragma: no cover - images module is optional during development
        pass
    from ntkbench.data import text

    loaders.update(text.LOADERS)
    return loaders
