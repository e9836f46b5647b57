"""Stage 3b: poisoned-data forensics (paper 001 section 4, Table 3), one job per experiment
with a ``forensics:`` block, over all its seeds and kernels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ntkbench import store
from ntkbench.data import load_bundle
from ntkbench.data.poison import POISONED_SPLIT
from ntkbench.forensics import TABLE3_METRICS, ForensicsResult, evaluate_forensics
from ntkbench.plots.forensics import plot_forensics_result
from ntkbench.stages.common import load_model, read_json, read_logits, snakemake_field, write_csv
from ntkbench.stages.kernels import check_kernel_file
from ntkbench.tables import format_with_uncertainty
from ntkbench.utils import atomic_write_text, get_logger

log = get_logger(__name__)

__all__ = ["ForensicsJob", "forensics_stage", "table_markdown"]

_GROUPS = ["test_train", f"{POISONED_SPLIT}_train"]


def table_markdown(table: pd.DataFrame) -> str:
    """Table 3 as Markdown, each value with its SEM in parenthesis notation, e.g. 0.643(12)."""
    headers = ["Kernel", "Precision (%)", "Recall (%)", "τ_K", "τ_K true class", "TAD (%)", "R_miss",
               "poi. τ_K", "poi. τ_K true class", "poi. TAD (%)", "poi. R_miss"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in table.to_dict("records"):
        cells = [str(row["kernel"])] + [
            format_with_uncertainty(row[m], row[f"{m}_sem"], signed=m.endswith("tad"),
                                    decimals=2 if m in ("precision", "recall", "tad", "poi_tad") else 3)
            for m in TABLE3_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ForensicsJob:
    """The inputs of one experiment's forensics job (rule ``forensics``).

    ``model_paths`` and ``logits_paths`` follow ``seeds``; ``kernel_paths``/``kglm_paths`` are
    keyed by (seed, kernel); ``kernel_options[kernel]`` are the options each kernel was
    computed with; ``settings`` is the experiment's ``forensics:`` block (schema defaults
    filled in); ``outputs`` has keys table, per_seed, attack, markdown, figure.
    """

    experiment: str = snakemake_field("wildcards.experiment")
    data_path: str | Path = snakemake_field("input.data")
    seeds: Sequence[int] = snakemake_field("params.seeds", convert=list)
    kernels: Sequence[str] = snakemake_field("params.kernels", convert=list)
    model_paths: Sequence[str | Path] = snakemake_field("input.models", convert=list)
    logits_paths: Sequence[str | Path] = snakemake_field("input.logits", convert=list)
    # (seed, kernel) pairs, params.runs, are the order of the kernel and kGLM inputs
    kernel_paths: Mapping[tuple[int, str], str | Path] = snakemake_field("input.kernels", keyed_by="params.runs")
    kglm_paths: Mapping[tuple[int, str], str | Path] = snakemake_field("input.kglm", keyed_by="params.runs")
    kernel_options: Mapping[str, dict[str, Any]] = snakemake_field("params.kernel_options")
    settings: Mapping[str, Any] = snakemake_field("params.settings")
    outputs: Mapping[str, str | Path] = snakemake_field("output")


def forensics_stage(job: ForensicsJob) -> ForensicsResult:
    """Table 3 of one experiment: read and check every input, evaluate, write tables and figure."""
    seeds, kernels, settings, outputs = job.seeds, job.kernels, job.settings, job.outputs
    bundle = load_bundle(job.data_path)
    splits = {"test": bundle.test, POISONED_SPLIT: bundle.extra_splits.get(POISONED_SPLIT, bundle.test)}
    logits = {seed: read_logits(path, bundle, {"train": bundle.train, **splits})
              for seed, path in zip(seeds, job.logits_paths, strict=True)}
    for seed, model_path, logits_path in zip(seeds, job.model_paths, job.logits_paths, strict=True):
        model, _ = load_model(model_path, bundle, logits_path, logits[seed])
        for kernel in kernels:
            check_kernel_file(job.kernel_paths[(seed, kernel)], kernel, job.kernel_options[kernel], model, bundle, _GROUPS)
    reports = {key: read_json(path, required=("test", POISONED_SPLIT)) for key, path in job.kglm_paths.items()}
    for key, report in reports.items():
        if report.get("kernel") != key[1]:
            raise ValueError(f"{job.kglm_paths[key]}: a kGLM report of kernel {report.get('kernel')!r}, expected {key[1]!r}")

    def load_kernels(seed: int, kernel: str):
        path = job.kernel_paths[(seed, kernel)]
        return tuple(store.read_kernel(path, group).kernel for group in _GROUPS)

    result = evaluate_forensics(bundle, seeds, kernels, logits, load_kernels, reports,
                                top_k=settings["top_k"], min_poisoned=settings["min_poisoned"],
                                figure_examples=settings["figure_examples"],
                                min_attack_success=settings["min_attack_success"],
                                min_clean_accuracy=settings["min_clean_accuracy"])
    write_csv(result.table, outputs["table"])
    write_csv(result.per_seed, outputs["per_seed"])
    write_csv(result.attack, outputs["attack"])
    atomic_write_text(outputs["markdown"], table_markdown(result.table))
    plot_forensics_result(outputs["figure"], result, bundle, min_poisoned=settings["min_poisoned"],
                          title=f"{job.experiment}: top-{settings['top_k']} training images per kernel "
                                f"for poisoned test images (seed {seeds[0]}; red = poisoned)")
    return result
