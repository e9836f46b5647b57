"""Stage 1: data bundles and trained networks (one per experiment and seed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ntkbench import metrics, models
from ntkbench.data import load_bundle, load_dataset, save_bundle
from ntkbench.training import TrainConfig, evaluate_logits, train_classifier
from ntkbench.training.health import check_training
from ntkbench.utils import atomic_path, atomic_savez, get_logger, resolve_device, seed_everything

log = get_logger(__name__)

__all__ = ["prepare_data_stage", "train_stage"]


def prepare_data_stage(spec: dict[str, Any], data_dir: str | Path, out_bundle: str | Path) -> None:
    """Build the data bundle a config ``data:`` block describes and save it."""
    bundle = load_dataset(spec, data_dir=data_dir)
    log.info("data %s: %d train, %s, %d classes, input shape %s", bundle.meta, len(bundle.train),
             {k: len(s) for k, s in bundle.eval_splits.items()}, bundle.num_classes, bundle.input_shape)
    save_bundle(bundle, out_bundle)


def train_stage(data_path: str | Path, model_spec: dict[str, Any], train_cfg: dict[str, Any],
                seed: int, device: str, out_model: str | Path, out_logits: str | Path,
                out_history: str | Path) -> None:
    """Train one network; save checkpoint, logits on every split, and the training curve.

    A diverged or dead network (see :func:`ntkbench.training.health.check_training`) stops the
    job before anything is written, unless ``train_cfg["allow_divergence"]``.
    """
    train_cfg = dict(train_cfg)
    allow_divergence = bool(train_cfg.pop("allow_divergence"))
    bundle = load_bundle(data_path)
    dev = resolve_device(device)
    # input_shape, num_outputs and what the data dictate beyond them (vocab_size for text)
    spec = {**model_spec, **bundle.model_args}
    seed_everything(seed)  # the initial weights depend on the seed too
    model = models.build(spec)
    log.info("training %s (%d parameters) on %s, seed %d", spec["name"],
             sum(p.numel() for p in model.parameters()), dev, seed)
    history = train_classifier(model, bundle, TrainConfig(**train_cfg), seed=seed, device=dev)
    splits = {"train": bundle.train, **bundle.eval_splits}
    logits = {name: evaluate_logits(model, s.x, device=dev).numpy() for name, s in splits.items()}
    for name, s in splits.items():
        log.info("final %s accuracy %.4f", name, metrics.accuracy(logits[name], s.y.numpy()))
    check_training(model, history, logits["train"], bundle.train.y.numpy(), bundle.num_classes,
                   allow_failure=allow_divergence, what=f"training {model_spec['name']} (seed {seed}) on {data_path}")
    models.save_checkpoint(out_model, model.cpu(), spec, seed=seed,
                           train={**train_cfg, "allow_divergence": allow_divergence})
    atomic_savez(out_logits, **{f"{k}_logits": v for k, v in logits.items()},
                 **{f"{k}_y": s.y.numpy() for k, s in splits.items()})
    with atomic_path(out_history) as tmp:
        history.to_csv(tmp, index=False)
