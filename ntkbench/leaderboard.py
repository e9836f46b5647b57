"""The zoo leaderboard: which eNTK-family kernel is most faithful, attributes best and costs
least, across architectures (issue 23). Receives computed results only; the stage
(:mod:`ntkbench.stages.leaderboard`) reads them from the runs' tables.

Inputs, one row per (architecture, kernel, metric): :func:`long_table` gathers them from

- the faithfulness summary (``results/summary.csv``): reference τ, true-class τ, TAD, R_miss
  and the linear-realisation R², mean ± SEM over seeds;
- the attribution table (``results/attribution.csv``, kGLM rows): LDS ± SEM over test points;
- each architecture's poisoned twin (``results/<twin>/forensics.csv``): precision and recall of
  the poisoned-training-point flag, mean ± SEM over seeds;
- the kernel jobs' ``benchmark:`` files: wall and CPU seconds and peak memory, mean ± SEM over
  seeds.

Ranks: within one architecture and metric, a kernel's rank is 1 + the number of kernels that
are better by more than one SEM (the larger of the two SEMs), so kernels within one SEM of
each other share a rank and the rule does not depend on the order. TAD is ranked by its
absolute value (0 = the surrogate is as accurate as the network); costs lower-is-better.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

__all__ = ["Metric", "METRICS", "QUALITY_METRICS", "rank_within_sem", "long_table", "leaderboard",
           "leaderboard_markdown"]


@dataclass(frozen=True)
class Metric:
    """A leaderboard column: its display name and which direction is better."""

    label: str
    higher_is_better: bool
    absolute: bool = False  # rank |value| (TAD)


METRICS: dict[str, Metric] = {
    "tau": Metric("τ", True),
    "tau_true_class": Metric("τ true class", True),
    "tad": Metric("|TAD| (points)", False, absolute=True),
    "r_miss": Metric("R_miss", True),
    "r2_linear": Metric("R² linear", True),
    "lds": Metric("LDS", True),
    "precision": Metric("poison precision", True),
    "recall": Metric("poison recall", True),
    "kernel_wall_s": Metric("kernel wall s", False),
    "kernel_cpu_s": Metric("kernel CPU s", False),
    "kernel_peak_mb": Metric("kernel peak MB", False),
}
#: The metrics whose ranks make the mean rank (faithfulness, attribution, forensics); costs are
#: ranked apart.
QUALITY_METRICS = ("tau", "tau_true_class", "tad", "r_miss", "r2_linear", "lds", "precision", "recall")


def rank_within_sem(mean: ArrayLike, sem: ArrayLike, higher_is_better: bool = True) -> NDArray[np.float64]:
    """Rank 1 = best: 1 + the number of entries better by more than max(sem_i, sem_j). NaN
    means stay NaN (unranked); a NaN SEM counts as 0."""
    m = np.asarray(mean, dtype=np.float64)
    s = np.nan_to_num(np.asarray(sem, dtype=np.float64), nan=0.0)
    sign = 1.0 if higher_is_better else -1.0
    ranks = np.full(m.shape, np.nan)
    ok = np.isfinite(m)
    for i in np.flatnonzero(ok):
        # "within one SEM" is inclusive; the tolerance keeps a difference of exactly one SEM
        # from counting as better through rounding
        better = sign * (m[ok] - m[i]) > np.maximum(s[ok], s[i]) * (1 + 1e-9) + 1e-12
        ranks[i] = 1 + int(better.sum())
    return ranks


def long_table(summary: pd.DataFrame, architectures: Mapping[str, Mapping[str, str | None]],
               attribution: pd.DataFrame | None = None, forensics: Mapping[str, pd.DataFrame] | None = None,
               costs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows (architecture, kernel, metric, mean, sem). ``architectures`` maps a display name to
    ``{"experiment": <clean experiment>, "badnet": <its poisoned twin or None>}``; ``forensics``
    maps a twin experiment to its forensics table; ``costs`` has columns experiment, kernel,
    seed, wall_s, cpu_s, peak_mb (one row per kernel job)."""
    rows = []

    def add(arch: str, kernel: str, metric: str, mean: float, sem: float) -> None:
        rows.append({"architecture": arch, "kernel": kernel, "metric": metric, "mean": float(mean),
                     "sem": float(sem) if sem == sem else np.nan})

    for arch, spec in architectures.items():
        exp = spec["experiment"]
        sub = summary[(summary["experiment"] == exp) & (summary.get("variant", "default") == "default")]
        if sub.empty:
            raise ValueError(f"the summary has no rows of experiment {exp!r} (architecture {arch!r})")
        for r in sub.itertuples():
            for metric in ("tau", "tau_true_class", "tad", "r_miss", "r2_linear"):
                add(arch, r.kernel, metric, getattr(r, metric), getattr(r, f"{metric}_sem"))
        if attribution is not None:
            att = attribution[(attribution["experiment"] == exp) & (attribution["method"] == "kglm")]
            for r in att.itertuples():
                add(arch, r.kernel, "lds", r.lds, r.lds_sem)
        twin = spec.get("badnet")
        if twin and forensics is not None:
            if twin not in forensics:
                raise ValueError(f"no forensics table of {twin!r} (the poisoned twin of {arch!r})")
            for r in forensics[twin].itertuples():
                add(arch, r.kernel, "precision", r.precision, r.precision_sem)
                add(arch, r.kernel, "recall", r.recall, r.recall_sem)
        if costs is not None:
            for kernel, group in costs[costs["experiment"] == exp].groupby("kernel", sort=False):
                for metric, col in (("kernel_wall_s", "wall_s"), ("kernel_cpu_s", "cpu_s"),
                                    ("kernel_peak_mb", "peak_mb")):
                    values = group[col].to_numpy(dtype=float)
                    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan
                    add(arch, kernel, metric, values.mean(), sem)
    return pd.DataFrame(rows, columns=["architecture", "kernel", "metric", "mean", "sem"])


def leaderboard(long: pd.DataFrame, kernels: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per kernel: per architecture and metric ``<arch>:<metric>``, ``…_sem`` and
    ``…_rank``; ``mean_rank`` over every (architecture, quality metric) rank the kernel has,
    ``mean_cost_rank`` over the CPU-time ranks; sorted by ``mean_rank``."""
    df = long.copy()
    df["rank"] = np.nan
    for (arch, metric), group in df.groupby(["architecture", "metric"], sort=False):
        spec = METRICS[metric]
        values = group["mean"].abs() if spec.absolute else group["mean"]
        df.loc[group.index, "rank"] = rank_within_sem(values, group["sem"], spec.higher_is_better)
    order = list(kernels) if kernels is not None else list(dict.fromkeys(df["kernel"]))
    table = pd.DataFrame({"kernel": order}).set_index("kernel")
    for (arch, metric), group in df.groupby(["architecture", "metric"], sort=False):
        g = group.set_index("kernel").reindex(order)
        table[f"{arch}:{metric}"] = g["mean"]
        table[f"{arch}:{metric}_sem"] = g["sem"]
        table[f"{arch}:{metric}_rank"] = g["rank"]
    quality = df[df["metric"].isin(QUALITY_METRICS)].groupby("kernel")["rank"].mean()
    cost = df[df["metric"] == "kernel_cpu_s"].groupby("kernel")["rank"].mean()
    table["mean_rank"] = quality.reindex(order)
    table["mean_cost_rank"] = cost.reindex(order)
    for metric in QUALITY_METRICS:
        ranks = df[df["metric"] == metric].groupby("kernel")["rank"].mean()
        if not ranks.empty:
            table[f"zoo:{metric}_mean_rank"] = ranks.reindex(order)
    return table.sort_values(["mean_rank", "mean_cost_rank"], kind="stable").reset_index()


def _cell(mean: float, sem: float, rank: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "—"
    text = f"{mean:.{digits}f}" + (f" ± {sem:.{digits}f}" if np.isfinite(sem) else "")
    return text + (f" ({int(rank)})" if np.isfinite(rank) else "")


def leaderboard_markdown(table: pd.DataFrame, architectures: Sequence[str], metrics: Sequence[str],
                         notes: Sequence[str] = ()) -> str:
    """One Markdown table per metric (kernels × architectures, ``mean ± SEM (rank)``), the
    mean ranks first, then ``notes`` as a list."""
    lines = ["| kernel | mean rank | mean cost rank | " + " | ".join(f"{m}: mean rank" for m in QUALITY_METRICS
                                                                  if f"zoo:{m}_mean_rank" in table) + " |"]
    cols = [m for m in QUALITY_METRICS if f"zoo:{m}_mean_rank" in table]
    lines.append("|" + "---|" * (3 + len(cols)))
    def rank(value: float) -> str:
        return f"{value:.2f}" if np.isfinite(value) else "—"

    for _, row in table.iterrows():
        lines.append(f"| {row['kernel']} | {rank(row['mean_rank'])} | {rank(row['mean_cost_rank'])} | "
                     + " | ".join(rank(row[f"zoo:{m}_mean_rank"]) for m in cols) + " |")
    for metric in metrics:
        present = [a for a in architectures if f"{a}:{metric}" in table]
        if not present:
            continue
        digits = 0 if metric.startswith("kernel_") else 3
        over = "test points" if metric == "lds" else "seeds"
        lines += ["", f"**{METRICS[metric].label}** (mean ± SEM over {over}, rank in parentheses; "
                  + ("higher" if METRICS[metric].higher_is_better else "lower") + " is better)", "",
                  "| kernel | " + " | ".join(present) + " |", "|" + "---|" * (1 + len(present))]
        for _, row in table.iterrows():
            lines.append(f"| {row['kernel']} | " + " | ".join(
                _cell(row[f"{a}:{metric}"], row[f"{a}:{metric}_sem"], row[f"{a}:{metric}_rank"], digits)
                for a in present) + " |")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"
