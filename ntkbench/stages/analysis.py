"""Stage 3d: the surrogate analysis of a few test points of one network per experiment
(paper 001, Figures 1-2, appendices L and M): kGLM attributions, exemplars, linear realisation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ntkbench import store
from ntkbench.analysis import (attribution_by_class, check_attribution_sums, realisation_pairs, select_test_points,
                               top_k_exemplars)
from ntkbench.data import DataBundle, load_bundle
from ntkbench.metrics import predicted_labels
from ntkbench.plots.analysis import plot_attributions, plot_exemplars, plot_realisation
from ntkbench.stages.common import InputError, load_model, read_json, read_logits, snakemake_field, write_csv
from ntkbench.stages.kernels import check_kernel_file
from ntkbench.stages.surrogates import read_kglm_fit
from ntkbench.tables import KERNEL_DISPLAY_NAMES
from ntkbench.utils import atomic_write_text, get_logger

log = get_logger(__name__)

__all__ = ["AnalysisJob", "AnalysisResult", "analysis_stage", "compute_analysis", "write_analysis_tables",
           "plot_analysis_figures", "class_names", "OUTPUT_KEYS"]

#: Keys of the ``outputs`` mapping :func:`analysis_stage` writes (the rule's output names).
OUTPUT_KEYS = ("attribution", "attribution_csv", "exemplars", "exemplars_csv", "exemplars_md", "realisation",
               "realisation_csv")


def class_names(bundle: DataBundle) -> list[str]:
    """Display names of the classes 0..C-1: ``meta["class_names"]``, else the original labels
    ``meta["classes"]`` (e.g. digits [3, 8] relabelled 0, 1), else the indices."""
    for key in ("class_names", "classes"):
        names = bundle.meta.get(key)
        if isinstance(names, list) and len(names) == bundle.num_classes:
            return [str(n) for n in names]
    return [str(c) for c in range(bundle.num_classes)]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9 * (1.0 + abs(b))


def _markdown(exemplars: pd.DataFrame, kernels: Sequence[str], top_k: int) -> str:
    lines = [f"# Top-{top_k} training points by kernel value", "",
             "Per test point and kernel: training index, label and kernel value κ(x, x_i), highest first.", ""]
    for (row, label), part in exemplars.groupby(["test_row", "test_label"], sort=False):
        lines += [f"## test #{row} (label {label})", "", "| kernel | " +
                  " | ".join(f"#{r + 1}" for r in range(top_k)) + " |", "|---" * (top_k + 1) + "|"]
        for kernel in kernels:
            cells = [f"{int(i)} (y={lab}, κ={v:.4g})" for i, lab, v in
                     part[part.kernel == kernel][["train_index", "train_label", "kernel_value"]].itertuples(index=False)]
            lines.append(f"| {KERNEL_DISPLAY_NAMES.get(kernel, kernel)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class AnalysisJob:
    """The inputs of one experiment's analysis job (rule ``analysis``): the network of training
    seed ``seed`` with its data and logits; per kernel (keyed by the names in ``kernels``) its
    kernel file, kernel options and kGLM fit and report; ``settings``: ``test_points`` (int:
    that many test rows drawn with ``selection_seed``; or a list of test rows),
    ``selection_seed``, ``top_k``; ``outputs`` has the keys :data:`OUTPUT_KEYS`."""

    experiment: str = snakemake_field("wildcards.experiment")
    data_path: str | Path = snakemake_field("input.data")
    model_path: str | Path = snakemake_field("input.model")
    logits_path: str | Path = snakemake_field("input.logits")
    seed: int = snakemake_field("params.seed", convert=int)
    kernels: Sequence[str] = snakemake_field("params.kernels", convert=list)
    # params.kernels is the order of the kernel and kGLM inputs
    kernel_paths: Mapping[str, str | Path] = snakemake_field("input.kernels", keyed_by="params.kernels")
    kernel_options: Mapping[str, dict[str, Any]] = snakemake_field("params.kernel_options")
    kglm_npz_paths: Mapping[str, str | Path] = snakemake_field("input.kglm_fits", keyed_by="params.kernels")
    kglm_json_paths: Mapping[str, str | Path] = snakemake_field("input.kglm_reports", keyed_by="params.kernels")
    settings: Mapping[str, Any] = snakemake_field("params.settings")
    outputs: Mapping[str, str | Path] = snakemake_field("output")


@dataclass
class AnalysisResult:
    """What :func:`compute_analysis` found, for the tables and the figures.

    ``rows`` (P,) are the selected test rows; per kernel: ``class_means[(p, kernel)]``
    (C_out, classes), ``box_values[(p, kernel)]`` (one array per training class),
    ``box_logit[(p, kernel)]`` (column, logit, predicted name), ``top_idx``/``top_val``
    (P, top_k), ``pairs`` (realisation frame) and ``r2s``.
    """

    bundle: DataBundle
    rows: np.ndarray
    names: list[str]
    logit_names: list[str]
    nn_pred: np.ndarray
    attribution: pd.DataFrame
    exemplars: pd.DataFrame
    realisation: pd.DataFrame
    class_means: dict = field(default_factory=dict)
    box_values: dict = field(default_factory=dict)
    box_logit: dict = field(default_factory=dict)
    top_idx: dict = field(default_factory=dict)
    top_val: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)
    r2s: dict = field(default_factory=dict)
    max_error: float = 0.0


def compute_analysis(job: AnalysisJob) -> AnalysisResult:
    """Read and check every input, then compute the attributions, exemplars and realisation.

    Each kernel file is checked (:func:`ntkbench.stages.kernels.check_kernel_file`: kind,
    options, this network, this data); each kGLM fit must reproduce its stored test logits on
    that kernel and its report must name the kernel. Attributions are checked to sum to the
    kGLM logits (eq. 3) and the realisation R² to equal the surrogate stage's reported
    ``r2_<Φ>``.
    """
    experiment, seed, kernels, settings = job.experiment, job.seed, job.kernels, job.settings
    bundle = load_bundle(job.data_path)
    test = bundle.test
    stored_logits = read_logits(job.logits_path, bundle, {"train": bundle.train, "test": test})
    nn_logits = stored_logits["test_logits"].astype(np.float64)
    model, ckpt = load_model(job.model_path, bundle, job.logits_path, stored_logits)
    if int(ckpt.get("seed", -1)) != int(seed):
        raise InputError(f"{job.model_path}: a network of training seed {ckpt.get('seed')}, expected {seed}")
    try:
        rows = select_test_points(len(test), settings["test_points"], int(settings["selection_seed"]))
    except ValueError as err:
        raise InputError(f"analysis.test_points of experiment {experiment!r}: {err}") from err
    top_k = int(settings["top_k"])
    names = class_names(bundle)
    c_out, n_train = bundle.num_outputs, len(bundle.train)
    logit_names = [f"z ({names[1]} vs {names[0]})"] if c_out == 1 else names
    y_train, y_test = bundle.train.y.numpy(), test.y.numpy()
    nn_pred = predicted_labels(nn_logits)

    attribution_rows, exemplar_rows, realisation_frames = [], [], []
    out = AnalysisResult(bundle, rows, names, logit_names, nn_pred, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    for kind in kernels:
        kernel_path = job.kernel_paths[kind]
        check_kernel_file(kernel_path, kind, job.kernel_options[kind], model, bundle, ["test_train"])
        K = store.read_kernel(kernel_path, "test_train").kernel  # as stored (float32): paper scale is GBs
        report = read_json(job.kglm_json_paths[kind], required=("kernel", "test", "kglm"))
        if report["kernel"] != kind:
            raise InputError(f"{job.kglm_json_paths[kind]}: the kGLM report of kernel {report['kernel']!r}, expected {kind!r}")
        glm, kglm_logits, recomputed = read_kglm_fit(job.kglm_npz_paths[kind], kernel_path, K, n_train, c_out)
        K_rows = K[rows].astype(np.float64)  # (P, N): the selected test points

        # 1. Attributions (eq. 3) of the selected points; they must add up to the logits.
        attr = glm.attribution(K_rows)  # (P, N, C_out)
        error = check_attribution_sums(attr, recomputed[rows], where=f"{kernel_path}: ")
        out.max_error = max(out.max_error, error)
        kglm_pred = predicted_labels(recomputed[rows])
        for p, row in enumerate(rows):
            # The predicted class's logit; a binary kGLM has one logit (class 1 against 0).
            column = 0 if c_out == 1 else int(kglm_pred[p])
            summary = attribution_by_class(attr[p], y_train, bundle.num_classes)
            summary.insert(0, "kernel", kind)
            summary.insert(1, "test_row", int(row))
            summary.insert(2, "test_label", names[y_test[row]])
            summary.insert(3, "nn_prediction", names[nn_pred[row]])
            summary.insert(4, "kglm_prediction", names[kglm_pred[p]])
            summary.insert(6, "logit_name", [logit_names[c] for c in summary["logit"]])
            summary.insert(7, "kglm_logit", recomputed[row, summary["logit"].to_numpy()])
            summary.insert(8, "predicted_logit", summary["logit"] == column)
            summary["train_class"] = [names[j] for j in summary["train_class"]]
            attribution_rows.append(summary)
            out.class_means[(p, kind)] = summary["mean"].to_numpy().reshape(c_out, bundle.num_classes)
            out.box_values[(p, kind)] = [attr[p, y_train == j, column] for j in range(bundle.num_classes)]
            out.box_logit[(p, kind)] = (column, float(recomputed[row, column]), names[kglm_pred[p]])

        # 2. Exemplars: the training points of highest kernel value.
        out.top_idx[kind], out.top_val[kind] = top_k_exemplars(K_rows, top_k)
        for p, row in enumerate(rows):
            for rank, (i, v) in enumerate(zip(out.top_idx[kind][p], out.top_val[kind][p]), start=1):
                exemplar_rows.append({"kernel": kind, "test_row": int(row), "test_label": names[y_test[row]],
                                      "rank": rank, "train_index": int(i), "train_label": names[y_train[i]],
                                      "kernel_value": float(v)})

        # 3. Linear realisation on the whole test split, the surrogate stage's very split and fit.
        frame, r2 = realisation_pairs(kglm_logits, nn_logits, y_test, seed=int(report["kglm"].get("seed", 0)))
        reported = {name: float(report["test"].get(f"r2_{name}", math.nan)) for name in r2}
        if not all(_same(r2[name], reported[name]) for name in r2):
            raise InputError(f"{job.kglm_json_paths[kind]}: reports R² {reported}, but its fit gives {r2} on the same "
                             "logits (a stale report?)")
        frame.insert(0, "kernel", kind)
        realisation_frames.append(frame)
        out.pairs[kind], out.r2s[kind] = frame, r2
        log.info("%s %s: attribution sums within %.2e of the logits; R² %s", experiment, kind, error,
                 {k: round(v, 4) for k, v in r2.items()})

    out.attribution = _tagged(pd.concat(attribution_rows, ignore_index=True), experiment, seed)
    out.exemplars = _tagged(pd.DataFrame(exemplar_rows), experiment, seed)
    out.realisation = _tagged(pd.concat(realisation_frames, ignore_index=True), experiment, seed)
    return out


def _tagged(table: pd.DataFrame, experiment: str, seed: int) -> pd.DataFrame:
    table.insert(0, "experiment", experiment)
    table.insert(1, "seed", int(seed))
    return table


def write_analysis_tables(result: AnalysisResult, job: AnalysisJob) -> None:
    """The attribution, exemplar and realisation tables (CSV; exemplars also Markdown)."""
    write_csv(result.attribution, job.outputs["attribution_csv"])
    write_csv(result.exemplars, job.outputs["exemplars_csv"])
    atomic_write_text(job.outputs["exemplars_md"], _markdown(result.exemplars, job.kernels, int(job.settings["top_k"])))
    write_csv(result.realisation, job.outputs["realisation_csv"])


def plot_analysis_figures(result: AnalysisResult, job: AnalysisJob) -> None:
    """The three figures: attributions, exemplars, linear realisation."""
    bundle, rows, names, outputs, kernels = result.bundle, result.rows, result.names, job.outputs, job.kernels
    test_x, train_x = bundle.test.x.numpy(), bundle.train.x.numpy()
    y_train, y_test = bundle.train.y.numpy(), bundle.test.y.numpy()
    top_k = int(job.settings["top_k"])
    where = f"{job.experiment}, network of seed {job.seed}"
    plot_attributions(
        outputs["attribution"], kernels, rows, test_x[rows], y_test[rows], result.nn_pred[rows], result.class_means,
        result.box_values, result.box_logit, names, result.logit_names,
        title=f"{where}: kGLM attributions A(x, x_i) = W_c,i κ(x, x_i) + b_c/N of {len(rows)} test points "
              f"(summed over the training points x_i they give the kGLM logit)\nper test point, top: mean "
              f"attribution per training class and logit; bottom: attributions to the logit of the kGLM's "
              f"predicted class, by training class")
    plot_exemplars(outputs["exemplars"], kernels, rows, test_x[rows], y_test[rows], train_x, y_train, result.top_idx,
                   result.top_val, names,
                   title=f"{where}: the {top_k} training points most similar to each test point "
                         f"(blue frame), highest kernel value κ first, one row per kernel")
    plot_realisation(outputs["realisation"], kernels, result.pairs, result.r2s,
                     title=f"{where}: linear realisation (appendix L). NN probability against Φ(kGLM logit) on "
                           f"the held-out half of the test set;\nΦ fitted on the other half, R² in logit space "
                           f"(probabilities within 1e-7 of 0 or 1 left out)")


def analysis_stage(job: AnalysisJob) -> dict[str, Any]:
    """The three analysis figures and their tables for the network of training seed
    ``job.seed`` (:func:`compute_analysis`, :func:`write_analysis_tables`,
    :func:`plot_analysis_figures`). Returns a summary (test rows, R² per kernel, largest
    attribution-sum error)."""
    result = compute_analysis(job)
    write_analysis_tables(result, job)
    plot_analysis_figures(result, job)
    return {"test_rows": result.rows.tolist(), "r2": result.r2s, "attribution_max_abs_error": result.max_error}
