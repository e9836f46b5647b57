"""Attribution stage: one job of the subset fan-out (M networks retrained on random subsets)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ntkbench.attribution.retrain import SEED_SCHEMES, retrain_subset, subset_model_seed
from ntkbench.attribution.subsets import subset_mask
from ntkbench.data import load_bundle
from ntkbench.stages.attribution.common import fingerprints
from ntkbench.utils import atomic_savez, get_logger, resolve_device

log = get_logger(__name__)

__all__ = ["subsets_stage"]


def subsets_stage(data_path: str | Path, model_spec: dict[str, Any], train_cfg: dict[str, Any], seed: int,
                  indices: Sequence[int], settings: Mapping[str, Any], device: str, out_path: str | Path) -> None:
    """Train the subset models ``indices`` (one job of the fan-out) and store, stacked over
    them: ``index`` (k,), ``mask`` (k, N), ``margins`` (k, n_test) true-class test margins,
    ``logits`` (k, n_test, C), ``model_seed``, ``train_acc``, ``test_acc``, ``seconds`` (k,),
    the settings ``fraction``, ``subset_seed``, ``seed``, ``seed_scheme`` and the data's
    fingerprints. ``settings`` holds ``fraction``, ``subset_seed`` and ``seed_scheme``."""
    if not indices:
        raise ValueError("a subset job needs at least one subset index")
    if settings["seed_scheme"] not in SEED_SCHEMES:
        raise ValueError(f"attribution.seed_scheme must be one of {SEED_SCHEMES}, got {settings['seed_scheme']!r}")
    bundle = load_bundle(data_path)
    dev = resolve_device(device)
    results = []
    for j in indices:
        mask = subset_mask(len(bundle.train), float(settings["fraction"]), int(settings["subset_seed"]), int(j))
        model_seed = subset_model_seed(int(seed), int(j), settings["seed_scheme"])
        out = {**retrain_subset(bundle, mask, model_spec, train_cfg, model_seed, dev), "mask": mask, "index": int(j)}
        if not np.all(np.isfinite(out["margins"])):
            raise FloatingPointError(f"subset {j}: the network's test margins are not finite (training diverged)")
        log.info("subset %d: %d training points, model seed %d, train acc %.3f, test acc %.3f, %.1f s", j,
                 out["subset_size"], out["seed"], out["train_acc"], out["test_acc"], out["seconds"])
        results.append(out)
    atomic_savez(out_path,
                 index=np.array([r["index"] for r in results], dtype=np.int64),
                 mask=np.stack([r["mask"] for r in results]),
                 margins=np.stack([r["margins"] for r in results]),
                 logits=np.stack([r["logits"] for r in results]),
                 model_seed=np.array([r["seed"] for r in results], dtype=np.int64),
                 train_acc=np.array([r["train_acc"] for r in results]),
                 test_acc=np.array([r["test_acc"] for r in results]),
                 seconds=np.array([r["seconds"] for r in results]),
                 fraction=np.array(float(settings["fraction"])), subset_seed=np.array(int(settings["subset_seed"])),
                 seed=np.array(int(seed)), seed_scheme=np.array(str(settings["seed_scheme"])),
                 **fingerprints(bundle))
