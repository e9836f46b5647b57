"""Attribution stages: the loss-gradient scores of an experiment's network, and its
noisy-label twin's self-influences for mislabel detection."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ntkbench import kernels as kernel_engine
from ntkbench import metrics, models, store
from ntkbench.attribution import benchmark
from ntkbench.attribution import methods as M
from ntkbench.attribution.mislabel import auc_rows
from ntkbench.data import DataBundle, load_bundle
from ntkbench.data.label_noise import label_noise_bundle
from ntkbench.kernels.threads import thread_budget
from ntkbench.stages.attribution.common import fingerprints
from ntkbench.stages.attribution.ground_truth import read_subsets
from ntkbench.stages.attribution.subsets import read_subset_states
from ntkbench.stages.common import InputError
from ntkbench.stages.kernels import engine_options
from ntkbench.surrogate import KernelGLM
from ntkbench.training import evaluate_logits
from ntkbench.utils import atomic_savez, atomic_write_text, get_logger, resolve_device

log = get_logger(__name__)

__all__ = ["gradients_stage", "mislabel_stage"]


def _trak_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    trak = settings["trak"]
    ensemble = trak["ensemble"]
    return {"proj_dim": int(trak["proj_dim"]), "proj_seed": int(trak["proj_seed"]), "proj_type": trak["proj_type"],
            "ridge": float(trak["ridge"]),
            "trak_ensemble": [int(k) for k in ensemble] if isinstance(ensemble, (list, tuple)) else int(ensemble),
            "num_checkpoints": int(settings["num_checkpoints"]), "batch_size": int(settings["batch_size"]),
            "grad_proj_dim": settings.get("gradient_proj_dim")}


def _as_trained(settings: Mapping[str, Any]) -> contextlib.AbstractContextManager:
    """Retrain with the train stage's intra-op thread count (``settings["train_threads"]``,
    the train rule's ``threads:``): a float32 GEMM's last bits depend on how many threads split
    its sums, so only then does retraining reproduce ``model.pt`` bit for bit on the CPU."""
    threads = settings.get("train_threads")
    return thread_budget(int(threads)) if threads else contextlib.nullcontext()


def _tracin_scheme(settings: Mapping[str, Any]) -> str:
    """``tracin.scheme``: ``checkpoints`` (TracIn-CP, also when the block is absent) or ``seeds``."""
    return (settings.get("tracin") or {}).get("scheme", "checkpoints")


def _renamed(values: dict[str, np.ndarray], settings: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """TracIn over a seed ensemble is reported as ``tracin-seeds`` (TracIn-CP stays ``tracin``)."""
    seeds = _tracin_scheme(settings) == "seeds"
    return {("tracin-seeds" if seeds and m == "tracin" else m): v for m, v in values.items()}


def _tracin_checkpoints(settings: Mapping[str, Any], bundle: DataBundle, model_spec: dict[str, Any],
                        train_cfg: dict[str, Any], seed: int, run: Any, device: torch.device,
                        model_paths: Sequence[str | Path] = ()) -> list | None:
    """TracIn's (state_dict, weight) pairs for ``tracin.scheme: seeds`` (the attributed network
    and the networks of the next seeds), or None for TracIn-CP's own checkpoints. The next
    seeds' networks are read from ``model_paths`` (the workflow's train jobs of seeds
    ``seed + 1, ...``, each checked to be that seed's network of this architecture), or
    trained here when none are given."""
    if _tracin_scheme(settings) == "checkpoints":
        return None
    tracin = settings["tracin"]
    count, weight = int(tracin["models"]), float(tracin["weight"])
    if not model_paths:
        pairs = benchmark.seed_ensemble(bundle, model_spec, train_cfg, seed, count, weight, device, first=run.model)
    else:
        if len(model_paths) != count - 1:
            raise InputError(f"tracin.models = {count} needs the networks of seeds {seed + 1}..{seed + count - 1}, "
                             f"got {len(model_paths)} files")
        pairs = [({k: v.detach().clone() for k, v in run.model.state_dict().items()}, weight)]
        for i, path in enumerate(model_paths, start=1):
            net, ckpt = models.load_checkpoint(path)
            if int(ckpt.get("seed", -1)) != seed + i:
                raise InputError(f"{path}: a network of training seed {ckpt.get('seed')}, expected {seed + i}")
            if type(net) is not type(run.model) or net.state_dict().keys() != run.model.state_dict().keys():
                raise InputError(f"{path}: another architecture than the attributed network")
            pairs.append((net.state_dict(), weight))
    log.info("TracIn over the final networks of seeds %d..%d, weight %g each", seed, seed + len(pairs) - 1,
             float(tracin["weight"]))
    return pairs


#: Largest weight difference, relative to the largest weight, accepted between the retrained
#: network and ``model.pt`` on the CPU: float32 SGD is reproducible only up to the rounding of
#: its GEMMs, whose last bits can depend on the process (threads, memory alignment); a changed
#: recipe moves the weights by orders of magnitude more.
RETRAIN_TOLERANCE = 1e-4


def _check_reproduces(run_model: torch.nn.Module, model_path: str | Path, seed: int, device: torch.device) -> float:
    """Largest parameter difference between the retrained network and the train stage's
    ``model.pt``: an error when it exceeds float32 rounding on the CPU (the recipe changed), a
    warning otherwise. ``run_model`` then gets ``model.pt``'s weights, so that the scores are
    exactly those of the network the other stages use."""
    reference, ckpt = models.load_checkpoint(model_path)
    if int(ckpt.get("seed", -1)) != int(seed):
        raise InputError(f"{model_path}: a network of training seed {ckpt.get('seed')}, expected {seed}")
    ref, new = reference.state_dict(), {k: v.detach().cpu() for k, v in run_model.state_dict().items()}
    if sorted(ref) != sorted(new) or any(ref[k].shape != new[k].shape for k in ref):
        raise InputError(f"{model_path}: another architecture than the experiment's model spec")
    diff = max(float((ref[k].double() - new[k].double()).abs().max()) if ref[k].numel() else 0.0 for k in ref)
    scale = max(float(v.double().abs().max()) if v.numel() and v.is_floating_point() else 0.0 for v in ref.values())
    if diff > 0:
        message = (f"retraining seed {seed} gives weights up to {diff:.3g} away from {model_path} (largest weight "
                   f"{scale:.3g})")
        if device.type == "cpu" and diff > RETRAIN_TOLERANCE * max(1.0, scale):
            raise RuntimeError(message + ": more than float32 rounding explains, so the training recipe changed")
        log.warning("%s: float32 rounding (%s); the scores use model.pt's weights", message,
                    "nondeterministic kernels on " + str(device) if device.type != "cpu" else "GEMM summation order")
        run_model.load_state_dict(ref)  # copies into the model's own tensors, on its device
    return diff


def gradients_stage(data_path: str | Path, model_path: str | Path, model_spec: dict[str, Any],
                    train_cfg: dict[str, Any], seed: int, settings: Mapping[str, Any], device: str,
                    out_path: str | Path, subset_paths: Sequence[str | Path] = (),
                    tracin_model_paths: Sequence[str | Path] = ()) -> None:
    """Scores τ(x, i) (n_test, N) of TracIn-CP, Grad-Dot, Grad-Cos and TRAK for the network of
    training seed ``seed``, retrained with checkpoints and checked against ``model_path``.
    Stored as ``scores_<method>`` with ``methods``, ``checkpoint_epochs``, ``checkpoint_lr``,
    ``max_weight_difference``, ``model_fingerprint`` and the data's fingerprints.

    With ``trak.ensemble_data: subsets`` TRAK's members are the LDS subset networks, read from
    ``subset_paths`` after the same checks the LDS stage makes (this data, these settings,
    each subset its deterministic draw); ``tracin.scheme: seeds`` uses the networks of the next
    seeds, read from ``tracin_model_paths`` (the workflow's train jobs, so a cluster fans them
    out) or trained here (:func:`ntkbench.attribution.benchmark.seed_ensemble`)."""
    bundle = load_bundle(data_path)
    dev = resolve_device(device)
    kw = _trak_kwargs(settings)
    members = None
    if settings["trak"].get("ensemble_data", "full") == "subsets":
        ensemble = kw["trak_ensemble"]
        count = max(ensemble) if isinstance(ensemble, list) else ensemble
        read_subsets(subset_paths, bundle, int(settings["num_subsets"]), settings, seed)  # checks them
        members = read_subset_states(subset_paths, count)
        log.info("TRAK over the first %d LDS subset networks", count)
    with _as_trained(settings):
        run = benchmark.checkpointed_run(bundle, model_spec, train_cfg, seed, dev, kw["num_checkpoints"],
                                         _tracin_scheme(settings) == "checkpoints")
    diff = _check_reproduces(run.model, model_path, seed, dev)
    log.info("retrained seed %d in %.1f s (max weight difference to %s: %.3g); checkpoints at epochs %s",
             seed, run.seconds, model_path, diff, [c.epoch for c in run.checkpoints])
    with _as_trained(settings):  # the seed ensemble's networks as the train jobs would train them
        tracin = _tracin_checkpoints(settings, bundle, model_spec, train_cfg, seed, run, dev, tracin_model_paths)
    scores, _ = benchmark.gradient_attributions(bundle, model_spec, train_cfg, seed, dev, run=run,
                                                self_influence=False, tracin_checkpoints=tracin, trak_members=members,
                                                **kw)
    scores = _renamed(scores, settings)
    for name, s in scores.items():
        if s.shape != (len(bundle.test), len(bundle.train)) or not np.all(np.isfinite(s)):
            raise FloatingPointError(f"{name}: scores of shape {s.shape} with non-finite values")
    reference, _ = models.load_checkpoint(model_path)
    atomic_savez(out_path, **{f"scores_{m}": s for m, s in scores.items()}, methods=np.array(list(scores)),
                 checkpoint_epochs=np.array([c.epoch for c in run.checkpoints], dtype=np.int64),
                 checkpoint_lr=np.array([c.lr for c in run.checkpoints]), max_weight_difference=np.array(diff),
                 model_fingerprint=np.array(store.model_fingerprint(reference)), **fingerprints(bundle))


def _self_influence_kernels(model: torch.nn.Module, bundle: DataBundle, y_fit: np.ndarray,
                            kernels: Sequence[str], kernel_options: Mapping[str, dict[str, Any]],
                            kglm_cfg: Mapping[str, Any], device: torch.device
                            ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Per kernel: the train × train kernel of ``model`` (the kernel stage's options), a kGLM
    fitted on it to ``y_fit``, and the self-influence of ``kglm`` and ``kernel-sim`` to each
    point's own (noisy) label."""
    cfg = dict(kglm_cfg)
    cfg.pop("target", None)
    y_train = bundle.train.y.numpy()
    out: dict[str, dict[str, np.ndarray]] = {}
    report: dict[str, Any] = {}
    for kind in kernels:
        K = kernel_engine.compute(model, bundle.train.x, None, kind=kind, device=device,
                                  **engine_options(kind, kernel_options[kind]))
        K = K.double().cpu().numpy()
        if K.shape != (len(y_train), len(y_train)) or not np.all(np.isfinite(K)):
            raise FloatingPointError(f"kernel {kind}: shape {K.shape} or non-finite values")
        glm = KernelGLM.from_config(cfg).fit(K, y_fit)
        diag = np.diag(K)
        out[kind] = {"kglm": M.kglm_self_influence(glm, diag, y_train), "kernel-sim": M.kernel_self_similarity(diag)}
        report[kind] = {"kglm_train_acc_noisy_labels": float((glm.predict(K) == y_train).mean())}
        log.info("noisy twin, kernel %s: kGLM accuracy on the noisy labels %.3f", kind,
                 report[kind]["kglm_train_acc_noisy_labels"])
    return out, report


def mislabel_stage(data_path: str | Path, model_spec: dict[str, Any], train_cfg: dict[str, Any], seed: int,
                   kernels: Sequence[str], kernel_options: Mapping[str, dict[str, Any]], kglm_cfg: Mapping[str, Any],
                   settings: Mapping[str, Any], device: str, out_npz: str | Path, out_json: str | Path) -> dict[str, Any]:
    """The mislabel-detection twin of one experiment (see the module docstring).

    Writes ``out_npz`` with ``flipped`` (N,), ``noisy_y`` (N,), ``selfinf_<method>`` for the
    gradient methods and ``selfinf_<method>__<kernel>`` for the kernel methods, plus the
    data's fingerprints (of the clean bundle); ``out_json`` a report (accuracies, AUCs)."""
    clean = load_bundle(data_path)
    dev = resolve_device(device)
    noise = settings["mislabel"]
    noisy = label_noise_bundle(clean, float(noise["fraction"]), int(noise["seed"]))
    flipped = np.asarray(noisy.extra["flipped"], dtype=bool)
    if flipped.sum() == 0 or flipped.all():
        raise ValueError(f"attribution.mislabel.fraction {noise['fraction']} flips {int(flipped.sum())} of "
                         f"{len(flipped)} labels; detection needs both flipped and clean points")
    kw = _trak_kwargs(settings)
    with _as_trained(settings):
        run = benchmark.checkpointed_run(noisy, model_spec, train_cfg, seed, dev, kw["num_checkpoints"],
                                         _tracin_scheme(settings) == "checkpoints")
    with _as_trained(settings):
        tracin = _tracin_checkpoints(settings, noisy, model_spec, train_cfg, seed, run, dev)
    _, selfinf = benchmark.gradient_attributions(noisy, model_spec, train_cfg, seed, dev, run=run, scores=False,
                                                 tracin_checkpoints=tracin, **kw)
    model = run.model
    train_logits = evaluate_logits(model, noisy.train.x, device=dev).numpy()
    test_logits = evaluate_logits(model, noisy.test.x, device=dev).numpy()
    y_noisy = noisy.train.y.numpy()
    y_fit = y_noisy if kglm_cfg.get("target", "labels") == "labels" else metrics.predicted_labels(train_logits)
    per_kernel, kernel_report = _self_influence_kernels(model, noisy, y_fit, kernels, kernel_options, kglm_cfg, dev)
    arrays = {f"selfinf_{m}": v for m, v in _renamed(selfinf, settings).items()}
    for kind, values in per_kernel.items():
        arrays.update({f"selfinf_{m}__{kind}": v for m, v in values.items()})
    for key, v in arrays.items():
        if v.shape != flipped.shape or not np.all(np.isfinite(v)):
            raise FloatingPointError(f"{key}: self-influence of shape {v.shape} with non-finite values")
    aucs = {row["method"]: row["auc"] for row in auc_rows({k[len("selfinf_"):]: v for k, v in arrays.items()}, flipped)}
    report = {
        "seed": int(seed), "mislabel": {"fraction": float(noise["fraction"]), "seed": int(noise["seed"])},
        "n_train": int(len(flipped)), "n_flipped": int(flipped.sum()),
        "nn_train_acc_noisy_labels": metrics.accuracy(train_logits, y_noisy),
        "nn_train_acc_clean_labels": metrics.accuracy(train_logits, noisy.extra["clean_train_y"]),
        "nn_flipped_fit": metrics.accuracy(train_logits[flipped], y_noisy[flipped]),
        "nn_test_acc": metrics.accuracy(test_logits, noisy.test.y.numpy()),
        "kernels": kernel_report, "auc": aucs,
    }
    log.info("noisy twin (%d of %d labels flipped): network fits %.3f of the flipped labels, test acc %.3f; AUCs %s",
             report["n_flipped"], report["n_train"], report["nn_flipped_fit"], report["nn_test_acc"],
             {k: round(v, 3) for k, v in aucs.items()})
    atomic_savez(out_npz, flipped=flipped, noisy_y=y_noisy, **arrays, **fingerprints(clean))
    atomic_write_text(out_json, json.dumps(report, indent=2, default=float))
    return report
