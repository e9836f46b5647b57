"""Attribution stage: the LDS ground truth of one experiment, gathered from the subset jobs'
files into one checked file with its provenance (:mod:`ntkbench.attribution.ground_truth`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ntkbench.attribution.ground_truth import GroundTruth, ProvenanceError
from ntkbench.attribution.retrain import subset_model_seed
from ntkbench.attribution.subsets import subset_mask
from ntkbench.data import DataBundle, load_bundle
from ntkbench.stages.attribution.common import check_fingerprints, data_provenance
from ntkbench.stages.common import InputError, read_npz
from ntkbench.utils import get_logger

log = get_logger(__name__)

__all__ = ["SUBSET_SETTINGS", "read_subsets", "subset_settings", "ground_truth_stage", "load_ground_truth"]

#: The ``attribution:`` settings that define a subset list and its networks' seeds.
SUBSET_SETTINGS = ("fraction", "subset_seed", "subset_draw", "seed_scheme")


def subset_settings(settings: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The subset-defining settings, typed, with the attributed network's training ``seed``."""
    return {"fraction": float(settings["fraction"]), "subset_seed": int(settings["subset_seed"]),
            "subset_draw": str(settings["subset_draw"]), "seed": int(seed), "seed_scheme": str(settings["seed_scheme"])}


def read_subsets(paths: Sequence[str | Path], bundle: DataBundle, num_subsets: int, settings: Mapping[str, Any],
                 seed: int) -> dict[str, np.ndarray]:
    """The subset jobs' files joined in index order: ``index``, ``mask`` (M, N), ``logits``
    (M, n_test, C), ``model_seed``, ``test_acc``. Every file is checked: this data bundle, these
    settings, each mask the deterministic draw of its index and each network its model seed
    (so a stale or foreign file is refused); the indices must be exactly ``0..M-1``."""
    n, n_test = len(bundle.train), len(bundle.test)
    expected = subset_settings(settings, seed)
    parts = []
    for path in paths:
        data = read_npz(path, ("index", "mask", "margins", "logits", "model_seed", "test_acc", "fraction",
                                "subset_seed", "seed", "seed_scheme"))
        check_fingerprints(path, data, bundle)
        # files written before subset_draw existed hold ntkbench's draw
        found = {"fraction": float(data["fraction"]), "subset_seed": int(data["subset_seed"]),
                 "subset_draw": str(data.get("subset_draw", "ntkbench")), "seed": int(data["seed"]),
                 "seed_scheme": str(data["seed_scheme"])}
        if found != expected:
            raise InputError(f"{path}: subsets trained with {found}, expected {expected}")
        k = len(data["index"])
        if data["mask"].shape != (k, n) or data["margins"].shape != (k, n_test) or data["logits"].shape[:2] != (k, n_test):
            raise InputError(f"{path}: masks {data['mask'].shape} / margins {data['margins'].shape} / logits "
                             f"{data['logits'].shape} do not fit {k} subsets of {n} training and {n_test} test points")
        for row, j in enumerate(data["index"]):
            if not np.array_equal(data["mask"][row], subset_mask(n, expected["fraction"], expected["subset_seed"], int(j),
                                                                 expected["subset_draw"])):
                raise InputError(f"{path}: the mask of subset {int(j)} is not its deterministic draw")
            if int(data["model_seed"][row]) != subset_model_seed(seed, int(j), expected["seed_scheme"]):
                raise InputError(f"{path}: subset {int(j)} was trained with model seed {int(data['model_seed'][row])}")
        parts.append(data)
    index = np.concatenate([p["index"] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    if sorted(index.tolist()) != list(range(num_subsets)):
        raise InputError(f"subset files {list(map(str, paths))} hold subsets {sorted(index.tolist())}, "
                         f"expected 0..{num_subsets - 1}")
    order = np.argsort(index)
    return {key: np.concatenate([p[key] for p in parts])[order]
            for key in ("index", "mask", "logits", "model_seed", "test_acc")}


def ground_truth_stage(data_path: str | Path, subset_paths: Sequence[str | Path], model_spec: dict[str, Any],
                       train_cfg: dict[str, Any], seed: int, settings: Mapping[str, Any],
                       out_path: str | Path) -> GroundTruth:
    """Join and check the subset jobs' files (:func:`read_subsets`) and write the ground truth
    with its provenance (the subset networks' model spec and recipe, the data's fingerprints,
    the subset settings and list) to ``out_path``."""
    bundle = load_bundle(data_path)
    subsets = read_subsets(subset_paths, bundle, int(settings["num_subsets"]), settings, seed)
    truth = GroundTruth.build(subsets["mask"], subsets["logits"], bundle.test.y.numpy(), subsets["index"],
                              subsets["model_seed"], subsets["test_acc"], model=model_spec, train=train_cfg,
                              data=data_provenance(bundle),
                              subsets=subset_settings(settings, seed))
    for target in ("margin", "neg_loss"):
        truth.outputs(target)  # finite, or the error names the target
    truth.save(out_path)
    log.info("ground truth: %d subset networks of %d points each, test accuracy %.3f (min %.3f); subset list %s",
             truth.num_subsets, int(truth.masks[0].sum()), truth.test_acc.mean(), truth.test_acc.min(),
             truth.provenance["subsets"]["subset_list"][:12])
    return truth


def load_ground_truth(path: str | Path, bundle: DataBundle, model_spec: Mapping[str, Any],
                      train_cfg: Mapping[str, Any], settings: Mapping[str, Any], seed: int) -> GroundTruth:
    """The ground truth at ``path``, refused (:class:`InputError`, naming the file and what
    differs) unless it is of this model spec, training recipe, data and subset settings."""
    try:
        truth = GroundTruth.load(path, model=model_spec, train=train_cfg,
                                 data=data_provenance(bundle),
                                 subsets={**subset_settings(settings, seed), "num_subsets": int(settings["num_subsets"])})
    except ProvenanceError as err:
        raise InputError(str(err)) from err
    if not np.array_equal(truth.test_y, bundle.test.y.numpy()):
        raise InputError(f"{path}: its test labels are not this bundle's")
    return truth
