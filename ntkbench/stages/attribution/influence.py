"""Attribution stage: influence-function scores of the attributed network (explicit damped
Gauss–Newton matrix, :mod:`ntkbench.attribution.influence`), one set per damping."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ntkbench import models, store
from ntkbench.attribution.influence import influence_scores, parameter_count
from ntkbench.data import load_bundle
from ntkbench.stages.attribution.common import fingerprints
from ntkbench.stages.common import InputError
from ntkbench.utils import atomic_savez, get_logger, resolve_device

log = get_logger(__name__)

__all__ = ["influence_method", "influence_stage"]


def influence_method(damping: float) -> str:
    """The table's method name of the influence function with damping λ: ``if@<λ>``."""
    return f"if@{float(damping):g}"


def influence_stage(data_path: str | Path, model_path: str | Path, seed: int, settings: Mapping[str, Any],
                    device: str, out_path: str | Path) -> list[str]:
    """Scores τ(x, i) (n_test, N) of the influence function for every damping of
    ``settings["influence"]`` (``damping``, ``max_params``), stored as ``scores_<method>`` with
    ``methods``, ``dampings``, ``n_params``, ``model_fingerprint`` and the data's fingerprints.
    A network with more than ``max_params`` parameters gets a file with no methods and the
    reason in ``skipped`` (logged), so the DAG does not depend on the model's size."""
    cfg = settings["influence"]
    bundle = load_bundle(data_path)
    model, ckpt = models.load_checkpoint(model_path)
    if int(ckpt.get("seed", -1)) != int(seed):
        raise InputError(f"{model_path}: a network of training seed {ckpt.get('seed')}, expected {seed}")
    n_params = parameter_count(model)
    common = dict(model_fingerprint=np.array(store.model_fingerprint(model)), n_params=np.array(n_params),
                  **fingerprints(bundle))
    if n_params > int(cfg["max_params"]):
        reason = (f"{n_params} parameters > attribution.influence.max_params = {cfg['max_params']} (the explicit "
                  f"Gauss-Newton matrix would take {n_params ** 2 * 8 / 2 ** 30:.1f} GiB)")
        log.warning("influence functions skipped: %s", reason)
        atomic_savez(out_path, methods=np.array([], dtype=str), dampings=np.array([]), skipped=np.array(reason),
                     **common)
        return []
    dev = resolve_device(device)
    model = model.to(dev)
    dampings = [float(d) for d in cfg["damping"]]
    scores = influence_scores(model, bundle.test.x, bundle.test.y, bundle.train.x, bundle.train.y, dampings,
                              batch_size=int(settings["batch_size"]), device=dev, max_params=int(cfg["max_params"]))
    methods = [influence_method(d) for d in dampings]
    for name, s in zip(methods, scores.values()):
        if s.shape != (len(bundle.test), len(bundle.train)) or not np.all(np.isfinite(s)):
            raise FloatingPointError(f"{name}: scores of shape {s.shape} with non-finite values")
    log.info("influence functions of %d parameters, dampings %s", n_params, dampings)
    atomic_savez(out_path, **{f"scores_{m}": s for m, s in zip(methods, scores.values())}, methods=np.array(methods),
                 dampings=np.array(dampings), skipped=np.array(""), **common)
    return methods

