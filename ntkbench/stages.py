"""One function per workflow stage: what each Snakemake rule does, importable and testable.

Each function reads its inputs from paths, does the work through the library modules, and
writes its outputs atomically. Workflow scripts only unpack ``snakemake`` and call these.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from ntkbench import metrics, models
from ntkbench.data import load_bundle
from ntkbench.training import TrainConfig, evaluate_logits, train_classifier
from ntkbench.utils import atomic_path, atomic_savez, atomic_write_text, get_logger, resolve_device, seed_everything

log = get_logger(__name__)

# Options of the kernel engine that each kind depends on: a rule's params hold only these,
# so changing, say, proj_dim reruns the projected kernels and nothing else.
COMMON_KERNEL_OPTIONS = ("batch_size", "dtype")
KIND_KERNEL_OPTIONS = {
    "proj-trntk": ("proj_dim", "proj_type", "proj_seed"),
    "proj-pntk": ("proj_dim", "proj_type", "proj_seed"),
    "em": ("em_layers",),
}


def kernel_options_for(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kernel_options`` that affects kernel ``kind``."""
    keys = COMMON_KERNEL_OPTIONS + KIND_KERNEL_OPTIONS.get(kind, ())
    return {k: options[k] for k in keys if k in options}


# ----------------------------------------------------------------------------- training
def train_stage(data_path: str | Path, model_spec: dict[str, Any], train_cfg: dict[str, Any],
                seed: int, device: str, out_model: str | Path, out_logits: str | Path,
                out_history: str | Path) -> None:
    """Train one network; save checkpoint, logits on every split, and the training curve."""
    bundle = load_bundle(data_path)
    dev = resolve_device(device)
    spec = {**model_spec, "input_shape": list(bundle.input_shape), "num_outputs": bundle.num_outputs}
    seed_everything(seed)  # the initial weights depend on the seed too
    model = models.build(spec)
    log.info("training %s (%d parameters) on %s, seed %d", spec["name"],
             sum(p.numel() for p in model.parameters()), dev, seed)
    history = train_classifier(model, bundle, TrainConfig(**train_cfg), seed=seed, device=dev)
    splits = {"train": bundle.train, **bundle.eval_splits}
    logits = {name: evaluate_logits(model, s.x, device=dev).numpy() for name, s in splits.items()}
    for name, s in splits.items():
        log.info("final %s accuracy %.4f", name, metrics.accuracy(logits[name], s.y.numpy()))
    models.save_checkpoint(out_model, model.cpu(), spec, seed=seed, train=train_cfg)
    atomic_savez(out_logits, **{f"{k}_logits": v for k, v in logits.items()},
                 **{f"{k}_y": s.y.numpy() for k, s in splits.items()})
    with atomic_path(out_history) as tmp:
        history.to_csv(tmp, index=False)


# ----------------------------------------------------------------------------- kernels
def kernel_stage(data_path: str | Path, model_path: str | Path, kind: str,
                 options: dict[str, Any], device: str, out_path: str | Path) -> None:
    """Compute kernel ``kind`` on train×train and every evaluation split × train into HDF5.

    Blocks are streamed into ``<out>.partial`` and the file is renamed when every group is
    complete, so an interrupted job resumes from its last finished block and Snakemake never
    sees a half-written kernel.
    """
    from ntkbench import kernels

    bundle = load_bundle(data_path)
    dev = resolve_device(device)
    model, ckpt = models.load_checkpoint(model_path, device=dev)
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    dtype = getattr(torch, options.get("dtype", "float32"))
    engine_opts: dict[str, Any] = {"batch_size": options.get("batch_size", 256), "dtype": dtype,
                                   "device": dev}
    if kind.startswith("proj-"):
        engine_opts.update(proj_dim=options["proj_dim"], proj_type=options["proj_type"],
                           seed=options["proj_seed"])
    if kind == "em" and options.get("em_layers"):
        engine_opts["layers"] = options["em_layers"]
    attrs = {"experiment_model": json.dumps(ckpt["spec"]), "seed": int(ckpt.get("seed", -1)),
             "data_meta": json.dumps(bundle.meta)}
    pairs = {"train_train": (bundle.train.x, None)}
    pairs.update({f"{name}_train": (s.x, bundle.train.x) for name, s in bundle.eval_splits.items()})
    for group, (x, y) in pairs.items():
        log.info("kernel %s: group %s, %d x %d", kind, group, len(x), len(bundle.train))
        kernels.compute_to_hdf5(partial, model, x, y, kind=kind, group=group,
                                block_size=options.get("block_size", 2048), attrs=attrs,
                                **engine_opts)
    os.replace(partial, out_path)


# ----------------------------------------------------------------------------- surrogates
def kglm_stage(data_path: str | Path, logits_path: str | Path, kernel_path: str | Path,
               kglm_cfg: dict[str, Any], out_json: str | Path, out_npz: str | Path) -> dict[str, Any]:
    """Fit a kGLM on the train×train kernel and measure its faithfulness on every eval split.

    Targets are the true labels, or the network's own predictions when
    ``kglm_cfg["target"] == "predictions"`` (paper 001, appendix I).
    """
    from ntkbench import store
    from ntkbench.surrogate import KernelGLM

    bundle = load_bundle(data_path)
    nn_out = np.load(logits_path)
    cfg = dict(kglm_cfg)
    target = cfg.pop("target", "labels")
    seed = int(cfg.pop("seed", 0))
    train = store.read_kernel(kernel_path, "train_train")
    y_train = bundle.train.y.numpy() if target == "labels" else metrics.predicted_labels(nn_out["train_logits"])
    glm = KernelGLM(seed=seed, **cfg).fit(train.kernel, y_train)
    report: dict[str, Any] = {
        "kernel": train.attrs.get("kind"), "target": target,
        "train_acc": float((glm.predict(train.kernel) == bundle.train.y.numpy()).mean()),
    }
    kglm_logits = {"train": glm.decision_function(train.kernel)}
    for name, split in bundle.eval_splits.items():
        k = store.read_kernel(kernel_path, f"{name}_train").kernel
        z = glm.decision_function(k)
        kglm_logits[name] = z
        scores = metrics.faithfulness(nn_out[f"{name}_logits"], z, split.y.numpy(), seed=seed)
        # Attribution identity (eq. 3): the per-training-point attributions sum to the logit.
        attr = glm.attribution(k[: min(len(k), 16)])
        scores["attribution_max_abs_error"] = float(np.abs(attr.sum(axis=1) - z[: len(attr)]).max())
        report[name] = scores
        log.info("%s: %s", name, {k2: round(v, 4) if isinstance(v, float) else v for k2, v in scores.items()})
    atomic_write_text(out_json, json.dumps(report, indent=2, default=float))
    atomic_savez(out_npz, **{f"{k}_logits": v for k, v in kglm_logits.items()})
    return report


# ----------------------------------------------------------------------------- report


def collect_faithfulness(records: Iterable[tuple[str, int, str, str | Path]], split: str = "test") -> pd.DataFrame:
    """One row per (experiment, seed, kernel) from kGLM report JSON files."""
    rows = []
    for experiment, seed, kernel, path in records:
        with open(path) as fh:
            report = json.load(fh)
        if split not in report:
            raise KeyError(f"{path}: no evaluation split {split!r} (has {sorted(report)})")
        scores = report[split]
        rows.append({"experiment": experiment, "seed": seed, "kernel": kernel,
                     **{m: scores.get(m, np.nan) for m in metrics.FAITHFULNESS_KEYS}})
    return pd.DataFrame(rows)


def summary_stage(records: Iterable[tuple[str, int, str, str | Path]], out_csv: str | Path,
                  out_per_seed: str | Path, out_markdown: str | Path, out_figure: str | Path) -> pd.DataFrame:
    """Write the per-seed table, the seed-aggregated summary (CSV + Markdown) and the τ figure."""
    from ntkbench import plots, tables

    per_seed = collect_faithfulness(records)
    summary = tables.aggregate_seeds(per_seed, by=["experiment", "kernel"], metrics=list(metrics.FAITHFULNESS_KEYS))
    with atomic_path(out_per_seed) as tmp:
        per_seed.to_csv(tmp, index=False)
    with atomic_path(out_csv) as tmp:
        summary.to_csv(tmp, index=False)
    atomic_write_text(out_markdown, tables.render_markdown_table(summary))
    plots.plot_faithfulness_summary(summary, out_figure)
    for row in summary.itertuples():
        log.info("%s / %s: tau %.3f ± %.3f, TAD %+.2f", row.experiment, row.kernel, row.tau,
                 row.tau_sem, row.tad)
    return summary
