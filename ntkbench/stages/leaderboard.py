"""Stage: the zoo leaderboard (``leaderboard.architectures``; :mod:`ntkbench.leaderboard`)
from the run's summary, attribution and forensics tables and its kernel jobs' benchmark files."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ntkbench.leaderboard import (METRICS, at_a_glance, experiment_rows, leaderboard, leaderboard_markdown,
                                  long_table, realisation_choice)
from ntkbench.plots.leaderboard import plot_heatmaps, plot_pareto
from ntkbench.stages.common import InputError, snakemake_field, write_csv
from ntkbench.utils import atomic_write_text, get_logger

log = get_logger(__name__)

__all__ = ["LeaderboardJob", "read_kernel_costs", "leaderboard_stage"]

#: The kernel job's benchmark file (untiled) or its tiles' files, under ``<results>/benchmarks``.
_COST_FILE = re.compile(r"(?P<exp>[^/]+)/seed(?P<seed>\d+)/kernel_(?P<kernel>[^/]+?)(?:\.tiles/.+)?\.tsv$")


def read_kernel_costs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per kernel job (experiment, seed, kernel; wall_s, cpu_s, peak_mb) from its
    ``benchmark:`` file(s): a tiled kernel's tiles are summed (wall and CPU) and their peak
    memory is the largest. An unreadable or empty file is an error naming it."""
    rows = []
    for path in paths:
        match = _COST_FILE.search(Path(path).as_posix())
        if not match:
            raise InputError(f"{path}: not a kernel job's benchmark file (<experiment>/seed<s>/kernel_<kind>.tsv)")
        try:
            frame = pd.read_csv(path, sep="\t")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise InputError(f"{path}: unreadable benchmark file ({err})") from err
        if frame.empty or not {"s", "cpu_time", "max_rss"} <= set(frame.columns):
            raise InputError(f"{path}: a benchmark file without s / cpu_time / max_rss")
        last = frame.iloc[-1]
        rows.append({"experiment": match["exp"], "seed": int(match["seed"]), "kernel": match["kernel"],
                     "wall_s": float(last["s"]), "cpu_s": float(last["cpu_time"]), "peak_mb": float(last["max_rss"])})
    if not rows:
        return pd.DataFrame(columns=["experiment", "seed", "kernel", "wall_s", "cpu_s", "peak_mb"])
    frame = pd.DataFrame(rows)
    return frame.groupby(["experiment", "seed", "kernel"], as_index=False, sort=False).agg(
        wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), peak_mb=("peak_mb", "max"))


def _accuracy_note(arch: str, spec: Mapping[str, Any], summary: pd.DataFrame, attack: pd.DataFrame | None) -> str:
    """The networks' test accuracies of one architecture, and its poisoned twin's per seed (clean
    accuracy, attack success, whether its forensics are ranked)."""
    rows = experiment_rows(summary, spec["experiment"])
    acc, sem = rows["nn_test_acc"].iloc[0], rows.get("nn_test_acc_sem", pd.Series([float("nan")])).iloc[0]
    seeds = int(rows["n_seeds"].iloc[0]) if "n_seeds" in rows else 0
    text = f"{arch} (experiment {spec['experiment']}): network test accuracy {acc:.2f} ± {sem:.2f} % over {seeds} seeds"
    phi = realisation_choice(rows)
    if phi is not None:
        text += f"; realisation R² of the {phi} Φ"
    if not spec.get("badnet"):
        return text
    text += f"; poisoned twin {spec['badnet']}"
    if attack is None:
        return text
    per_seed = ", ".join(f"seed {int(r.seed)} {100 * r.clean_acc:.1f} % clean / {100 * r.attack_success_rate:.1f} % "
                         "attack success" for r in attack.itertuples())
    failed = attack.loc[~attack["attack_ok"], "seed"].astype(int).tolist()
    return text + f": {per_seed}" + (
        f" — the backdoor failed its gate (forensics.min_clean_accuracy / min_attack_success) on seed(s) {failed}, "
        "so its precision and recall are shown but not ranked" if failed else "")


def _read_table(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=["", "NaN", "nan"])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path}: not a readable table ({err})") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}")
    return frame


@dataclass(frozen=True)
class LeaderboardJob:
    """Inputs of the leaderboard job: the summary, the attribution table (or None), the
    poisoned twins' forensics and attack tables (keyed by twin experiment), the kernel jobs'
    benchmark files, the ``leaderboard:`` settings and the kernels in display order; four
    outputs."""

    summary_path: str | Path = snakemake_field("input.summary")
    attribution_path: str | Path | None = snakemake_field("input.attribution", convert=lambda v: v or None)
    forensics_paths: Mapping[str, str | Path] = snakemake_field("input.forensics", keyed_by="params.twins")
    attack_paths: Mapping[str, str | Path] = snakemake_field("input.attacks", keyed_by="params.twins")
    cost_paths: Sequence[str | Path] = snakemake_field("input.costs", convert=list)
    settings: Mapping[str, Any] = snakemake_field("params.settings")
    kernels: Sequence[str] = snakemake_field("params.kernels", convert=list)
    num_subsets: int = snakemake_field("params.num_subsets", convert=int)
    out_csv: str | Path = snakemake_field("output.csv")
    out_markdown: str | Path = snakemake_field("output.markdown")
    out_heatmap: str | Path = snakemake_field("output.heatmap")
    out_pareto: str | Path = snakemake_field("output.pareto")


def leaderboard_stage(job: LeaderboardJob) -> pd.DataFrame:
    """Gather, rank and write the leaderboard (CSV, Markdown) and its two figures."""
    architectures = job.settings["architectures"]
    summary = _read_table(job.summary_path, ["experiment", "kernel", "tau", "tau_sem", "nn_test_acc"])
    attribution = None if job.attribution_path is None else \
        _read_table(job.attribution_path, ["experiment", "method", "kernel", "lds", "lds_sem"])
    forensics = {twin: _read_table(path, ["kernel", "precision", "recall", "precision_sem", "recall_sem"])
                 for twin, path in job.forensics_paths.items()}
    attacks = {twin: _read_table(path, ["seed", "clean_acc", "attack_success_rate", "attack_ok"])
               for twin, path in job.attack_paths.items()}
    for twin, frame in attacks.items():
        if frame["attack_ok"].dtype != bool:
            raise InputError(f"{job.attack_paths[twin]}: column attack_ok is not boolean ({frame['attack_ok'].dtype})")
    costs = read_kernel_costs(job.cost_paths)
    try:
        long = long_table(summary, architectures, attribution, forensics, costs, attacks)
    except ValueError as err:
        raise InputError(f"{job.summary_path}: {err}") from err
    names = list(architectures)
    table = leaderboard(long, job.kernels)
    reference = job.settings["reference"]  # default in the config schema
    glance = at_a_glance(long, job.kernels, reference)
    table = table.merge(glance.set_index("kernel").add_prefix("zoo:"), left_on="kernel", right_index=True, how="left")
    notes = [_accuracy_note(arch, spec, summary, attacks.get(spec.get("badnet"))) for arch, spec in architectures.items()]
    notes.append(f"LDS: the kGLM attribution of the first seed's network against {job.num_subsets} subset "
                 "networks (attribution.num_subsets); precision / recall: the poisoned twin's forensics flag (%).")
    notes.append("Rank: 1 + the number of kernels better by more than one SEM (so kernels within one SEM share a "
                 "rank); mean rank over every architecture and quality metric (τ, true-class τ, |TAD|, R_miss, "
                 "realisation R², LDS, precision, recall); cost rank: kernel job CPU time (its benchmark file). Where "
                 "the true-class τ equals the reference τ (multi-class networks: the reference τ ranks true-class "
                 "probabilities) it is shown without a rank, so τ counts once.")
    write_csv(table, job.out_csv)
    metrics = [m for m in METRICS if m in set(long["metric"])]
    atomic_write_text(job.out_markdown, "# Zoo leaderboard\n\n" + leaderboard_markdown(table, names, metrics, notes,
                                                                                  glance, reference))
    plot_heatmaps(long, job.kernels, names, job.out_heatmap)
    plot_pareto(long, job.kernels, names, job.out_pareto, cost_metric=job.settings.get("cost", "kernel_cpu_s"))
    log.info("leaderboard of %d kernels over %d architectures; best mean rank: %s", len(table), len(names),
             table["kernel"].iloc[0])
    return table
