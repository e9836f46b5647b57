"""The LDS ground truth as a product of its own: subset masks, the subset networks' test
logits, and the provenance that says what they are.

Retraining M networks is the expensive part of the LDS (:mod:`ntkbench.attribution.lds`); the
file written here lets any method be scored later without it::

    from ntkbench.attribution.ground_truth import GroundTruth
    truth = GroundTruth.load("results/mnist10-mlp/attribution/ground_truth.npz",
                             model=model_spec, train=train_cfg)      # refused if another recipe
    truth.lds(scores, target="neg_loss")                              # scores (n_test, N)

Arrays: ``masks`` (M, N) bool, ``logits`` (M, n_test, C) float32 (every target is derived
from them), ``test_y`` (n_test,), ``index``, ``model_seed`` and ``test_acc`` (M,). The provenance is
one JSON document (:attr:`GroundTruth.provenance`):

- ``model``, ``train``: the subset networks' model spec and training recipe;
- ``data``: fingerprints of the training inputs, training labels and test labels;
- ``subsets``: ``num_subsets``, ``fraction``, ``subset_seed``, ``subset_draw``, ``seed`` and
  ``seed_scheme``, plus ``subset_list``, a SHA-256 of the masks;
- ``ntkbench``: the version that wrote it.

:meth:`GroundTruth.load` refuses, naming the file and the differing key, a ground truth of
another model, recipe, data or subset list than the caller expects.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ntkbench import __version__
from ntkbench.attribution.lds import LDSResult, compute_lds
from ntkbench.attribution.retrain import lds_target
from ntkbench.integrity import load_npz
from ntkbench.utils import atomic_savez

__all__ = ["GroundTruth", "ProvenanceError", "subset_list_digest", "canonical"]


class ProvenanceError(ValueError):
    """A ground-truth file that is not the one the caller expects (or not one at all)."""


def canonical(value: Any) -> Any:
    """``value`` as plain JSON types (tuples → lists, numpy scalars → Python), for comparison."""
    return json.loads(json.dumps(value, sort_keys=True, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def subset_list_digest(masks: ArrayLike) -> str:
    """SHA-256 of the membership masks (M, N): the identity of a subset list."""
    m = np.ascontiguousarray(np.asarray(masks, dtype=bool))
    return hashlib.sha256(np.array(m.shape, dtype=np.int64).tobytes() + np.packbits(m, axis=None).tobytes()).hexdigest()


@dataclass(frozen=True)
class GroundTruth:
    """M subset networks' test outputs with their subsets and provenance (module docstring)."""

    masks: NDArray[np.bool_]
    logits: NDArray[np.float32]
    test_y: NDArray[np.int64]
    index: NDArray[np.int64]
    model_seed: NDArray[np.int64]
    test_acc: NDArray[np.float64]
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m, n_test = self.masks.shape[0], self.test_y.shape[0]
        if self.masks.ndim != 2 or self.logits.ndim != 3 or self.logits.shape[:2] != (m, n_test) \
                or self.index.shape != (m,) or self.model_seed.shape != (m,) or self.test_acc.shape != (m,):
            raise ValueError(f"ground truth arrays do not fit together: masks {self.masks.shape}, logits "
                             f"{self.logits.shape}, test_y {self.test_y.shape}, index {self.index.shape}, "
                             f"model_seed {self.model_seed.shape}, test_acc {self.test_acc.shape}")

    @property
    def num_subsets(self) -> int:
        return int(self.masks.shape[0])

    def outputs(self, target: str = "margin") -> NDArray[np.float64]:
        """The LDS target of every subset network on every test point, (M, n_test) float64."""
        out = np.stack([lds_target(z, self.test_y, target) for z in self.logits])
        if not np.all(np.isfinite(out)):
            raise ValueError(f"a subset network has a non-finite LDS target ({target}; training diverged?)")
        return out

    def lds(self, scores: ArrayLike, target: str = "margin") -> LDSResult:
        """LDS of a method's scores (n_test, N) against this ground truth."""
        return compute_lds(scores, self.masks, self.outputs(target))

    @classmethod
    def build(cls, masks: ArrayLike, logits: ArrayLike, test_y: ArrayLike, index: ArrayLike, model_seed: ArrayLike,
              test_acc: ArrayLike, *,
              model: Mapping[str, Any], train: Mapping[str, Any], data: Mapping[str, str],
              subsets: Mapping[str, Any]) -> "GroundTruth":
        """A ground truth with its provenance computed from these arrays and settings."""
        masks = np.asarray(masks, dtype=bool)
        provenance = {"model": canonical(model), "train": canonical(train), "data": canonical(data),
                      "subsets": {**canonical(subsets), "num_subsets": int(masks.shape[0]),
                                  "subset_list": subset_list_digest(masks)},
                      "ntkbench": __version__}
        return cls(masks, np.asarray(logits, dtype=np.float32), np.asarray(test_y, dtype=np.int64),
                   np.asarray(index, dtype=np.int64), np.asarray(model_seed, dtype=np.int64),
                   np.asarray(test_acc, dtype=np.float64), provenance)

    def save(self, path: str | Path) -> None:
        """Write the arrays and the provenance (JSON) to ``path`` (.npz, atomically)."""
        atomic_savez(path, masks=self.masks, logits=self.logits, test_y=self.test_y, index=self.index,
                     model_seed=self.model_seed, test_acc=self.test_acc, provenance=np.array(json.dumps(self.provenance, sort_keys=True)))

    @classmethod
    def load(cls, path: str | Path, *, model: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
             data: Mapping[str, str] | None = None, subsets: Mapping[str, Any] | None = None,
             subset_list: ArrayLike | str | None = None) -> "GroundTruth":
        """Read ``path`` and check it against what the caller expects: the model spec, the
        training recipe, the data fingerprints, the subset settings (each key given must
        match) and the subset list (masks (M, N) or their :func:`subset_list_digest`). A
        mismatch raises :class:`ProvenanceError` naming the file and the key."""
        arrays = load_npz(path, what="ground-truth file")
        missing = [k for k in ("masks", "logits", "test_y", "index", "model_seed", "test_acc", "provenance") if k not in arrays]
        if missing:
            raise ProvenanceError(f"{path}: not a ground-truth file (missing {missing})")
        try:
            provenance = json.loads(str(arrays["provenance"]))
        except json.JSONDecodeError as err:
            raise ProvenanceError(f"{path}: unreadable provenance ({err})") from err
        truth = cls(arrays["masks"].astype(bool), arrays["logits"], arrays["test_y"], arrays["index"],
                    arrays["model_seed"], arrays["test_acc"], provenance)
        if subset_list_digest(truth.masks) != provenance.get("subsets", {}).get("subset_list"):
            raise ProvenanceError(f"{path}: its masks do not match the subset list its provenance records")
        expected: dict[str, Any] = {"model": model, "train": train, "data": data}
        for key, want in expected.items():
            if want is not None and provenance.get(key) != canonical(want):
                raise ProvenanceError(f"{path}: a ground truth of {key} {provenance.get(key)}, expected {canonical(want)}")
        for key, want in canonical(dict(subsets or {})).items():
            found = provenance.get("subsets", {}).get(key)
            if found != want:
                raise ProvenanceError(f"{path}: a ground truth of subsets.{key} = {found!r}, expected {want!r}")
        if subset_list is not None:
            digest = subset_list if isinstance(subset_list, str) else subset_list_digest(subset_list)
            if digest != provenance["subsets"]["subset_list"]:
                raise ProvenanceError(f"{path}: a ground truth of another subset list "
                                      f"({provenance['subsets']['subset_list'][:12]}…, expected {digest[:12]}…)")
        return truth

