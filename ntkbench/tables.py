"""Seed aggregation and paper-style Markdown tables (paper 001, Tables 1, 2 and 5).

Uncertainties are standard errors of the mean over seeds, written in parenthesis notation
with one significant digit of error: ``0.708(3)`` means 0.708 ± 0.003.

Both Kendall τ are shown (see :mod:`ntkbench.metrics`): ``τ_K`` is the reference code's
(class-1 probability for binary networks, saturated points dropped), ``τ_K true class`` ranks
the true-class log-probabilities. Every table names the kGLM solver and alpha behind its
numbers (the per-seed columns ``solver`` and ``alpha``, from ``KernelGLM.describe()``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ntkbench.kinds import KINDS
from ntkbench.metrics import mean_sem

__all__ = [
    "SUMMARY_LEADING_COLUMNS",
    "SETTINGS_COLUMNS",
    "KERNEL_DISPLAY_NAMES",
    "aggregate_seeds",
    "format_with_uncertainty",
    "render_markdown_table",
]

#: The summary's first metric columns, in this order (after the group keys and n_seeds).
#: Every other ``<metric>``/``<metric>_sem`` column follows them.
SUMMARY_LEADING_COLUMNS: tuple[str, ...] = (
    "nn_test_acc",
    "kglm_test_acc",
    "tad",
    "tad_sem",
    "tau",
    "tau_sem",
    "tau_true_class",
    "tau_true_class_sem",
    "r_miss",
    "r_miss_sem",
)

#: Per-seed columns that describe how a number was produced rather than measure anything
#: (kGLM solver, its alpha, the fit target). :func:`aggregate_seeds` carries them through
#: (right after ``n_seeds``) instead of averaging them.
SETTINGS_COLUMNS: tuple[str, ...] = ("solver", "alpha", "target")

#: How the paper writes each kernel name (from the kind registry).
KERNEL_DISPLAY_NAMES: dict[str, str] = {name: kind.display for name, kind in KINDS.items()}

MISSING = "—"


def aggregate_seeds(
    df: pd.DataFrame,
    by: Sequence[str] = ("experiment", "kernel"),
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Collapse one row per (experiment, kernel, seed) into one row per group.

    Output columns: the ``by`` keys, ``n_seeds`` (rows in the group), the
    :data:`SETTINGS_COLUMNS` present in ``df`` and not in ``by`` (``solver``, ``alpha``,
    ``target``: the group's value, or its distinct values joined by ``/`` if they differ
    between seeds), then for every metric its NaN-aware mean ``<metric>`` and standard error
    ``<metric>_sem`` (NaN for fewer than two non-NaN values; see
    :func:`ntkbench.metrics.mean_sem`). The columns of :data:`SUMMARY_LEADING_COLUMNS` that
    exist come first among the metrics, in that order, so the summary starts ``experiment,
    kernel, n_seeds, [solver, alpha, target,] nn_test_acc, kglm_test_acc, tad, tad_sem, tau,
    tau_sem, tau_true_class, tau_true_class_sem, r_miss, r_miss_sem``. Groups keep the order
    in which they first appear.

    ``metrics=None`` aggregates every numeric column other than ``by``, ``seed`` and the
    settings columns.
    """
    by = list(by)
    missing_keys = [key for key in by if key not in df.columns]
    if missing_keys:
        raise KeyError(f"aggregate_seeds: grouping column(s) {missing_keys} not in the table "
                       f"(columns: {list(df.columns)})")
    settings = [c for c in SETTINGS_COLUMNS if c in df.columns and c not in by]
    if metrics is None:
        metrics = [c for c in df.select_dtypes("number").columns
                   if c not in by and c != "seed" and c not in settings]
    metrics = list(metrics)
    missing_metrics = [m for m in metrics if m not in df.columns]
    if missing_metrics:
        raise KeyError(f"aggregate_seeds: metric column(s) {missing_metrics} not in the table "
                       f"(columns: {list(df.columns)})")

    rows = []
    for keys, group in df.groupby(by, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row: dict[str, object] = dict(zip(by, keys))
        row["n_seeds"] = len(group)
        for column in settings:
            row[column] = _setting_value(group[column])
        for metric in metrics:
            row[metric], row[f"{metric}_sem"] = mean_sem(pd.to_numeric(group[metric], errors="coerce"))
        rows.append(row)

    value_columns = [c for m in metrics for c in (m, f"{m}_sem")]
    leading = [c for c in SUMMARY_LEADING_COLUMNS if c in value_columns]
    ordered = by + ["n_seeds"] + settings + leading + [c for c in value_columns if c not in leading]
    return pd.DataFrame(rows, columns=ordered)


def _setting_value(values: pd.Series) -> object:
    """The one value of a settings column within a group, or its distinct values joined by
    ``/`` (so a table shows that seeds were fitted differently); None when all are missing."""
    distinct = list(dict.fromkeys(v for v in values if not pd.isna(v)))
    if not distinct:
        return None
    if len(distinct) == 1:
        return distinct[0]
    return "/".join(_format_setting(v) for v in distinct)


def _format_alpha(alpha: object) -> str:
    """``1e-4`` for powers of ten, ``%g`` otherwise; strings (joined values) pass through."""
    if isinstance(alpha, str):
        return alpha
    value = float(alpha)  # type: ignore[arg-type]
    if value > 0:
        exponent = round(math.log10(value))
        if math.isclose(value, 10.0**exponent, rel_tol=1e-9):
            return f"1e{exponent}"
    return f"{value:g}"


def _format_setting(value: object) -> str:
    return _format_alpha(value) if isinstance(value, (int, float, np.floating)) else str(value)


def format_with_uncertainty(
    mean: float, sem: float | None = None, *, signed: bool = False, decimals: int = 3
) -> str:
    """``mean`` with its error as one significant digit in parentheses: ``0.708(3)``.

    The error is rounded to one significant digit and ``mean`` to the same decimal place
    (``0.7083 ± 0.0031 → "0.708(3)"``, ``99.641 ± 0.012 → "99.64(1)"``,
    ``0.0096`` rounds up to ``0.01``). Errors of 1 or more are written in the units of the
    last shown digit of an integer (``93.2 ± 2.3 → "93(2)"``, ``1234 ± 23 → "1230(20)"``).
    A NaN/None/0 error (or one at float-rounding level, below 1e-12 of the value) prints the
    value alone with ``decimals`` decimals; a NaN mean prints
    ``"—"``. ``signed=True`` always writes the sign (``"+0.03(5)"``, as for TAD).
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)) or not np.isfinite(mean):
        return MISSING
    mean = float(mean)
    sign = "+" if signed else ""
    # An error at the level of float rounding (identical values averaged) counts as none.
    if sem is None or not np.isfinite(sem) or abs(sem) <= 1e-12 * max(1.0, abs(mean)):
        text = f"{mean:{sign}.{decimals}f}"
        return _drop_negative_zero(text, signed)
    sem = abs(float(sem))
    place = -math.floor(math.log10(sem))  # decimal place of the error's leading digit
    digit = round(sem * 10.0**place)
    if digit >= 10:  # e.g. 0.0096 → 0.01: the leading digit moves one place left
        place -= 1
        digit = round(sem * 10.0**place)
    if place > 0:
        text = f"{round(mean, place):{sign}.{place}f}({digit})"
    else:
        unit = 10 ** (-place)
        text = f"{int(round(mean / unit)) * unit:{sign}d}({digit * unit})"
    return _drop_negative_zero(text, signed)


def _drop_negative_zero(text: str, signed: bool) -> str:
    """``-0.00`` → ``0.00`` (``+0.00`` when signed): rounding must not invent a sign."""
    number = text.split("(")[0]
    if number.startswith("-") and float(number) == 0.0:
        return ("+" if signed else "") + text[1:]
    return text


def _cell(row: pd.Series, metric: str, signed: bool = False, decimals: int = 3) -> str:
    mean = row.get(metric, math.nan)
    sem = row.get(f"{metric}_sem", math.nan)
    return format_with_uncertainty(
        math.nan if pd.isna(mean) else float(mean),
        math.nan if pd.isna(sem) else float(sem),
        signed=signed,
        decimals=decimals,
    )


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _kglm_cell(row: pd.Series) -> str:
    """``sgd α=1e-4`` / ``lbfgs α=1e-2``: the solver and alpha behind a row's numbers."""
    solver = row.get("solver")
    alpha = row.get("alpha")
    parts = []
    if solver is not None and not pd.isna(solver):
        parts.append(str(solver))
    if alpha is not None and not (isinstance(alpha, float) and math.isnan(alpha)):
        parts.append(f"α={_format_alpha(alpha)}")
    return " ".join(parts) if parts else MISSING


def _is_prediction_target(summary_df: pd.DataFrame) -> pd.Series:
    if "target" not in summary_df.columns:
        return pd.Series(False, index=summary_df.index)
    return summary_df["target"].astype(str) == "predictions"


def _table1(rows: pd.DataFrame) -> str:
    body = [
        [
            str(row["experiment"]),
            str(int(row["n_seeds"])),
            _cell(row, "nn_test_acc", decimals=2),
            _cell(row, "tad", signed=True, decimals=2),
            _cell(row, "tau", decimals=3),
            _cell(row, "tau_true_class", decimals=3),
            _kglm_cell(row),
        ]
        for _, row in rows.iterrows()
    ]
    header = ["Model (Dataset)", "# Models", "NN test acc (%)", "TAD (%)", "τ_K",
              "τ_K true class", "kGLM"]
    return _markdown(header, body)


def render_markdown_table(summary_df: pd.DataFrame, table1_kernel: str = "trntk") -> str:
    """Paper-style Markdown of a seed-aggregated summary (:func:`aggregate_seeds`).

    * Table 1 — one row per summary row of ``table1_kernel`` whose kGLM was fitted to the
      true labels: ``# Models`` (seeds), NN test acc (%), TAD (%), τ_K (the reference τ),
      τ_K true class, kGLM (solver and alpha). Omitted when there is no such row.
    * Table 5 — the same layout for the rows whose kGLM was fitted to the network's
      predictions (``target == "predictions"``, paper 001 appendix I). Omitted when none.
    * Table 2 — for every experiment, rows τ_K, τ_K true class, TAD (%), R_Miss and kGLM,
      one column per kernel (paper names: trNTK, trNTK⁰, proj-trNTK, ...), in the order
      kernels first appear. When an experiment has rows with several solvers, alphas or
      targets, each combination gets its own block, labelled with it.

    Values carry their standard error in parenthesis notation
    (:func:`format_with_uncertainty`); a missing value (or column) is ``—``.
    """
    required = ["experiment", "kernel", "n_seeds", "tau", "tad"]
    missing = [c for c in required if c not in summary_df.columns]
    if missing:
        raise KeyError(f"render_markdown_table: summary lacks column(s) {missing}; "
                       "build it with aggregate_seeds")
    sections: list[str] = []
    kernel_name = KERNEL_DISPLAY_NAMES.get(table1_kernel, table1_kernel)
    predictions = _is_prediction_target(summary_df)
    is_table1_kernel = summary_df["kernel"] == table1_kernel

    table1 = summary_df[is_table1_kernel & ~predictions]
    if len(table1):
        sections.append(f"### Table 1: faithfulness of κ = {kernel_name} surrogates\n\n"
                        + _table1(table1))
    table5 = summary_df[is_table1_kernel & predictions]
    if len(table5):
        sections.append(f"### Table 5: κ = {kernel_name} surrogates fitted to the network's "
                        "predictions\n\n" + _table1(table5))

    kernels = list(dict.fromkeys(summary_df["kernel"]))
    settings = [c for c in SETTINGS_COLUMNS if c in summary_df.columns]
    body = []
    for experiment, group in summary_df.groupby("experiment", sort=False):
        varying = [c for c in settings if group[c].astype(str).nunique() > 1]
        blocks = group.groupby(varying, sort=False, dropna=False) if varying else [((), group)]
        for keys, block in blocks:
            keys = keys if isinstance(keys, tuple) else (keys,)
            label = str(experiment)
            if varying:
                label += " (" + ", ".join(f"{c} {_format_setting(v)}" for c, v in zip(varying, keys)) + ")"
            by_kernel = {row["kernel"]: row for _, row in block.iterrows()}
            for name, metric, signed, decimals in (
                ("τ_K", "tau", False, 3),
                ("τ_K true class", "tau_true_class", False, 3),
                ("TAD (%)", "tad", True, 2),
                ("R_Miss", "r_miss", False, 2),
                ("kGLM", None, False, 0),
            ):
                cells = [
                    (MISSING if k not in by_kernel
                     else _kglm_cell(by_kernel[k]) if metric is None
                     else _cell(by_kernel[k], metric, signed, decimals))
                    for k in kernels
                ]
                body.append([label if name == "τ_K" else "", name, *cells])
    header = ["Experiment", "Metric", *[KERNEL_DISPLAY_NAMES.get(k, k) for k in kernels]]
    sections.append("### Table 2: comparison across surrogate kernels\n\n" + _markdown(header, body))
    return "\n\n".join(sections) + "\n"
