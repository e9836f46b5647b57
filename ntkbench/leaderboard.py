"""The zoo leaderboard: which eNTK-family kernel is most faithful, attributes best and costs
least, across architectures (issue 23). Receives computed results only; the stage
(:mod:`ntkbench.stages.leaderboard`) reads them from the runs' tables.

Inputs, one row per (architecture, kernel, metric): :func:`long_table` gathers them from

- the faithfulness summary (``results/summary.csv``): reference τ, true-class τ, TAD, R_miss
  and the linear-realisation R², mean ± SEM over seeds. Of the three Φ that map the kGLM onto
  the network (appendix L: linear, logistic, arctan), each architecture reports the one with the
  highest mean R² over its kernels (:func:`realisation_choice`), so its kernels are compared
  under one Φ: on ten classes the linear Φ, clipped into (0, 1) and scored in logit space, is
  negative almost everywhere;
- the attribution table (``results/attribution.csv``, kGLM rows): LDS ± SEM over test points;
- each architecture's poisoned twin (``results/<twin>/forensics.csv``): precision and recall of
  the poisoned-training-point flag, mean ± SEM over seeds; where the twin's backdoor failed its
  gate on any seed (``results/<twin>/attack.csv``: clean accuracy or attack success too low)
  they are shown but not ranked, since the forensics stage calls them not meaningful;
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

__all__ = ["Metric", "METRICS", "QUALITY_METRICS", "REALISATION_PHIS", "rank_within_sem", "experiment_rows",
           "realisation_choice", "long_table", "leaderboard", "at_a_glance", "leaderboard_markdown"]


@dataclass(frozen=True)
class Metric:
    """A leaderboard column: its display name and which direction is better."""

    label: str
    higher_is_better: bool
    absolute: bool = False  # rank |value| (TAD)


METRICS: dict[str, Metric] = {
    "tau": Metric("τ", True),
    "tau_true_class": Metric("τ true class", True),
    "tad": Metric("TAD (points; ranked by |TAD|)", False, absolute=True),
    "r_miss": Metric("R_miss", True),
    "r2": Metric("realisation R² (best Φ)", True),
    "lds": Metric("LDS", True),
    "precision": Metric("poison precision", True),
    "recall": Metric("poison recall", True),
    "kernel_wall_s": Metric("kernel wall s", False),
    "kernel_cpu_s": Metric("kernel CPU s", False),
    "kernel_peak_mb": Metric("kernel peak MB", False),
}
#: The metrics whose ranks make the mean rank (faithfulness, attribution, forensics); costs are
#: ranked apart.
QUALITY_METRICS = ("tau", "tau_true_class", "tad", "r_miss", "r2", "lds", "precision", "recall")
#: The linear-realisation Φ whose R² the summary may hold (``r2_<Φ>``), in order of preference on ties.
REALISATION_PHIS = ("linear", "logistic", "arctan")


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


def experiment_rows(summary: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The summary's rows of ``experiment`` (its default variant: one row per kernel)."""
    return summary[(summary["experiment"] == experiment) & (summary.get("variant", "default") == "default")]


def realisation_choice(rows: pd.DataFrame) -> str | None:
    """The Φ (of :data:`REALISATION_PHIS` with a column ``r2_<Φ>`` in ``rows``, one
    architecture's summary rows) with the highest mean R² over the rows' kernels; None if no
    such column has a finite value."""
    best, best_value = None, -np.inf
    for phi in REALISATION_PHIS:
        if f"r2_{phi}" in rows:
            value = pd.to_numeric(rows[f"r2_{phi}"], errors="coerce").mean()
            if np.isfinite(value) and value > best_value:
                best, best_value = phi, value
    return best


def long_table(summary: pd.DataFrame, architectures: Mapping[str, Mapping[str, str | None]],
               attribution: pd.DataFrame | None = None, forensics: Mapping[str, pd.DataFrame] | None = None,
               costs: pd.DataFrame | None = None, attacks: Mapping[str, pd.DataFrame] | None = None
               ) -> pd.DataFrame:
    """Rows (architecture, kernel, metric, mean, sem, ranked). ``architectures`` maps a display
    name to ``{"experiment": <clean experiment>, "badnet": <its poisoned twin or None>}``;
    ``forensics`` maps a twin experiment to its forensics table and ``attacks`` to its attack
    table (one row per seed with a boolean ``attack_ok``): a twin whose attack failed on any
    seed has its precision and recall rows ``ranked=False``, and so does the true-class τ of
    an architecture where it equals the reference τ (every multi-class network), so that one
    number is not ranked twice; ``costs`` has columns experiment,
    kernel, seed, wall_s, cpu_s, peak_mb (one row per kernel job)."""
    rows = []

    def add(arch: str, kernel: str, metric: str, mean: float, sem: float, ranked: bool = True) -> None:
        rows.append({"architecture": arch, "kernel": kernel, "metric": metric, "mean": float(mean),
                     "sem": float(sem) if sem == sem else np.nan, "ranked": ranked})

    for arch, spec in architectures.items():
        exp = spec["experiment"]
        sub = experiment_rows(summary, exp)
        if sub.empty:
            raise ValueError(f"the summary has no rows of experiment {exp!r} (architecture {arch!r})")
        phi = realisation_choice(sub)
        # On C >= 2 outputs the reference τ is the true-class τ by definition: shown, ranked once
        same_tau = bool(np.allclose(sub["tau"], sub["tau_true_class"], rtol=0, atol=1e-12, equal_nan=True))
        for r in sub.itertuples():
            for metric in ("tau", "tau_true_class", "tad", "r_miss"):
                add(arch, r.kernel, metric, getattr(r, metric), getattr(r, f"{metric}_sem"),
                    not (same_tau and metric == "tau_true_class"))
            if phi is not None:
                add(arch, r.kernel, "r2", getattr(r, f"r2_{phi}"), getattr(r, f"r2_{phi}_sem", np.nan))
        if attribution is not None:
            att = attribution[(attribution["experiment"] == exp) & (attribution["method"] == "kglm")]
            for r in att.itertuples():
                add(arch, r.kernel, "lds", r.lds, r.lds_sem)
        twin = spec.get("badnet")
        if twin and forensics is not None:
            if twin not in forensics:
                raise ValueError(f"no forensics table of {twin!r} (the poisoned twin of {arch!r})")
            meaningful = attacks is None or twin not in attacks or bool(attacks[twin]["attack_ok"].all())
            for r in forensics[twin].itertuples():
                add(arch, r.kernel, "precision", r.precision, r.precision_sem, meaningful)
                add(arch, r.kernel, "recall", r.recall, r.recall_sem, meaningful)
        if costs is not None:
            for kernel, group in costs[costs["experiment"] == exp].groupby("kernel", sort=False):
                for metric, col in (("kernel_wall_s", "wall_s"), ("kernel_cpu_s", "cpu_s"),
                                    ("kernel_peak_mb", "peak_mb")):
                    values = group[col].to_numpy(dtype=float)
                    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan
                    add(arch, kernel, metric, values.mean(), sem)
    return pd.DataFrame(rows, columns=["architecture", "kernel", "metric", "mean", "sem", "ranked"])


def leaderboard(long: pd.DataFrame, kernels: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per kernel: per architecture and metric ``<arch>:<metric>``, ``…_sem`` and
    ``…_rank``; ``mean_rank`` over every (architecture, quality metric) rank the kernel has,
    ``mean_cost_rank`` over the CPU-time ranks; sorted by ``mean_rank``. Rows with
    ``ranked`` False (see :func:`long_table`) keep their values and get no rank."""
    df = long.copy()
    df["rank"] = np.nan
    ranked = df["ranked"].astype(bool) if "ranked" in df else pd.Series(True, index=df.index)
    for (arch, metric), group in df[ranked].groupby(["architecture", "metric"], sort=False):
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


#: The at-a-glance summary: per kernel, these metrics' mean and range over the architectures.
GLANCE_METRICS = ("tau", "tau_true_class", "lds")


def at_a_glance(long: pd.DataFrame, kernels: Sequence[str] | None = None, reference: str = "trntk") -> pd.DataFrame:
    """One row per kernel across the zoo: ``<metric>_mean`` / ``_min`` / ``_max`` over the
    architectures' means for each of :data:`GLANCE_METRICS`, ``n_architectures``, and the
    kernel jobs' CPU time relative to ``reference`` on the same architecture
    (``cpu_vs_<reference>_median`` / ``_min`` / ``_max``; NaN where ``reference`` was not run)."""
    order = list(kernels) if kernels is not None else list(dict.fromkeys(long["kernel"]))
    table = pd.DataFrame(index=pd.Index(order, name="kernel"))
    for metric in GLANCE_METRICS:
        grid = long[long["metric"] == metric].pivot_table(index="kernel", columns="architecture", values="mean")
        grid = grid.reindex(order)
        table[f"{metric}_mean"], table[f"{metric}_min"], table[f"{metric}_max"] = \
            grid.mean(axis=1), grid.min(axis=1), grid.max(axis=1)
    tau = long[long["metric"] == "tau"]
    table["n_architectures"] = tau.groupby("kernel")["architecture"].nunique().reindex(order).fillna(0).astype(int)
    cpu = long[long["metric"] == "kernel_cpu_s"].pivot_table(index="kernel", columns="architecture", values="mean")
    ratio = cpu.div(cpu.loc[reference], axis=1).reindex(order) if reference in cpu.index else \
        pd.DataFrame(np.nan, index=order, columns=cpu.columns)
    for name, how in (("median", ratio.median), ("min", ratio.min), ("max", ratio.max)):
        table[f"cpu_vs_{reference}_{name}"] = how(axis=1)
    return table.reset_index()


def _glance_markdown(glance: pd.DataFrame, reference: str) -> list[str]:
    def spread(row: pd.Series, metric: str) -> str:
        if not np.isfinite(row[f"{metric}_mean"]):
            return "—"
        return f"{row[f'{metric}_mean']:.2f} ({row[f'{metric}_min']:.2f} to {row[f'{metric}_max']:.2f})"

    def cost(row: pd.Series) -> str:
        median = row[f"cpu_vs_{reference}_median"]
        if not np.isfinite(median):
            return "—"
        return f"{median:.2f}× ({row[f'cpu_vs_{reference}_min']:.2f}× to {row[f'cpu_vs_{reference}_max']:.2f}×)"

    lines = ["**At a glance**: mean over the architectures (min to max); kernel CPU time relative to "
             f"{reference} on the same architecture, median (min to max)", "",
             f"| kernel | architectures | τ | τ true class | LDS | CPU time vs {reference} |", "|---|---|---|---|---|---|"]
    for _, row in glance.iterrows():
        lines.append(f"| {row['kernel']} | {row['n_architectures']} | {spread(row, 'tau')} | "
                     f"{spread(row, 'tau_true_class')} | {spread(row, 'lds')} | {cost(row)} |")
    return lines + [""]


def _cell(mean: float, sem: float, rank: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "—"
    text = f"{mean:.{digits}f}" + (f" ± {sem:.{digits}f}" if np.isfinite(sem) else "")
    return text + (f" ({int(rank)})" if np.isfinite(rank) else "")


def leaderboard_markdown(table: pd.DataFrame, architectures: Sequence[str], metrics: Sequence[str],
                         notes: Sequence[str] = (), glance: pd.DataFrame | None = None,
                         reference: str = "trntk") -> str:
    """One Markdown table per metric (kernels × architectures, ``mean ± SEM (rank)``), the
    mean ranks first (after the :func:`at_a_glance` table when ``glance`` is given), then
    ``notes`` as a list."""
    lines = (_glance_markdown(glance.set_index("kernel").reindex(table["kernel"]).reset_index(), reference)
             if glance is not None else [])
    lines += ["| kernel | mean rank | mean cost rank | " + " | ".join(f"{m}: mean rank" for m in QUALITY_METRICS
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
