"""Attribution stage: one job of the subset fan-out (M networks retrained on random subsets)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ntkbench.attribution.retrain import SEED_SCHEMES, retrain_subset, subset_model_seed
from ntkbench.attribution.subsets import subset_mask
from ntkbench.data import load_bundle
from ntkbench.stages.attribution.common import fingerprints
from ntkbench.stages.common import InputError, read_npz
from ntkbench.utils import atomic_savez, get_logger, resolve_device

log = get_logger(__name__)

__all__ = ["subsets_stage", "read_subset_states", "STATE_PREFIX"]

#: Prefix of the stored subset networks' state-dict arrays in a subset job's file.
STATE_PREFIX = "state:"


def subsets_stage(data_path: str | Path, model_spec: dict[str, Any], train_cfg: dict[str, Any], seed: int,
                  indices: Sequence[int], settings: Mapping[str, Any], device: str, out_path: str | Path) -> None:
    """Train the subset models ``indices`` (one job of the fan-out) and store, stacked over
    them: ``index`` (k,), ``mask`` (k, N), ``margins`` (k, n_test) true-class test margins,
    ``logits`` (k, n_test, C), ``model_seed``, ``train_acc``, ``test_acc``, ``seconds`` (k,),
    the settings ``fraction``, ``subset_seed``, ``subset_draw``, ``seed``, ``seed_scheme`` and the
    data's fingerprints. ``settings`` holds ``fraction``, ``subset_seed``, ``subset_draw`` and
    ``seed_scheme``."""
    if not indices:
        raise ValueError("a subset job needs at least one subset index")
    if settings["seed_scheme"] not in SEED_SCHEMES:
        raise ValueError(f"attribution.seed_scheme must be one of {SEED_SCHEMES}, got {settings['seed_scheme']!r}")
    bundle = load_bundle(data_path)
    dev = resolve_device(device)
    results = []
    for j in indices:
        mask = subset_mask(len(bundle.train), float(settings["fraction"]), int(settings["subset_seed"]), int(j),
                           settings["subset_draw"])
        model_seed = subset_model_seed(int(seed), int(j), settings["seed_scheme"])
        out = {**retrain_subset(bundle, mask, model_spec, train_cfg, model_seed, dev,
                                keep_state=bool(settings.get("store_weights", False))), "mask": mask, "index": int(j)}
        if not np.all(np.isfinite(out["margins"])):
            raise FloatingPointError(f"subset {j}: the network's test margins are not finite (training diverged)")
        log.info("subset %d: %d training points, model seed %d, train acc %.3f, test acc %.3f, %.1f s", j,
                 out["subset_size"], out["seed"], out["train_acc"], out["test_acc"], out["seconds"])
        results.append(out)
    states = {f"{STATE_PREFIX}{name}": np.stack([r["state"][name].numpy() for r in results])
              for name in results[0]["state"]} if "state" in results[0] else {}
    atomic_savez(out_path, **states,
                 index=np.array([r["index"] for r in results], dtype=np.int64),
                 mask=np.stack([r["mask"] for r in results]),
                 margins=np.stack([r["margins"] for r in results]),
                 logits=np.stack([r["logits"] for r in results]),
                 model_seed=np.array([r["seed"] for r in results], dtype=np.int64),
                 train_acc=np.array([r["train_acc"] for r in results]),
                 test_acc=np.array([r["test_acc"] for r in results]),
                 seconds=np.array([r["seconds"] for r in results]),
                 fraction=np.array(float(settings["fraction"])), subset_seed=np.array(int(settings["subset_seed"])),
                 subset_draw=np.array(str(settings["subset_draw"])),
                 seed=np.array(int(seed)), seed_scheme=np.array(str(settings["seed_scheme"])),
                 **fingerprints(bundle))


def read_subset_states(paths: Sequence[str | Path], count: int) -> list[dict[str, torch.Tensor]]:
    """State dicts of subset networks ``0 .. count - 1`` from the subset jobs' files (stored with
    ``store_weights``), in index order; an error names a file without them or missing indices."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    for path in paths:
        data = read_npz(path, ("index",))
        names = [k for k in data if k.startswith(STATE_PREFIX)]
        if not names:
            raise InputError(f"{path}: no stored subset networks (trained without store_weights); rerun its job")
        for row, j in enumerate(data["index"]):
            found[int(j)] = {k[len(STATE_PREFIX):]: torch.from_numpy(np.array(data[k][row])) for k in names}
    missing = [j for j in range(count) if j not in found]
    if missing:
        raise InputError(f"subset networks {missing} are in none of {list(map(str, paths))}")
    return [found[j] for j in range(count)]
