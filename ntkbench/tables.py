"""Seed aggregation and paper-style Markdown tables (paper 001, Tables 1 and 2).

Uncertainties are standard errors of the mean over seeds, written in parenthesis notation
with one significant digit of error: ``0.708(3)`` means 0.708 ± 0.003.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ntkbench.metrics import mean_sem

__all__ = [
    "SUMMARY_LEADING_COLUMNS",
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
    "r_miss",
    "r_miss_sem",
)

#: How the paper writes each kernel name.
KERNEL_DISPLAY_NAMES: dict[str, str] = {
    "entk": "eNTK",
    "trntk": "trNTK",
    "trntk0": "trNTK⁰",
    "pntk": "pNTK",
    "pntk0": "pNTK⁰",
    "proj-trntk": "proj-trNTK",
    "proj-pntk": "proj-pNTK",
    "em": "Em",
    "ck": "CK",
}

MISSING = "—"


def aggregate_seeds(
    df: pd.DataFrame,
    by: Sequence[str] = ("experiment", "kernel"),
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Collapse one row per (experiment, kernel, seed) into one row per group.

    Output columns: the ``by`` keys, ``n_seeds`` (rows in the group), then for every metric
    its NaN-aware mean ``<metric>`` and standard error ``<metric>_sem`` (NaN for fewer than
    two non-NaN values; see :func:`ntkbench.metrics.mean_sem`). The columns of
    :data:`SUMMARY_LEADING_COLUMNS` that exist come first, in that order, so the summary
    starts ``experiment, kernel, n_seeds, nn_test_acc, kglm_test_acc, tad, tad_sem, tau,
    tau_sem, r_miss, r_miss_sem``. Groups keep the order in which they first appear.

    ``metrics=None`` aggregates every numeric column other than ``by`` and ``seed``.
    """
    by = list(by)
    missing_keys = [key for key in by if key not in df.columns]
    if missing_keys:
        raise KeyError(f"aggregate_seeds: grouping column(s) {missing_keys} not in the table "
                       f"(columns: {list(df.columns)})")
    if metrics is None:
        metrics = [c for c in df.select_dtypes("number").columns if c not in by and c != "seed"]
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
        for metric in metrics:
            row[metric], row[f"{metric}_sem"] = mean_sem(pd.to_numeric(group[metric], errors="coerce"))
        rows.append(row)

    value_columns = [c for m in metrics for c in (m, f"{m}_sem")]
    leading = [c for c in SUMMARY_LEADING_COLUMNS if c in value_columns]
    ordered = by + ["n_seeds"] + leading + [c for c in value_columns if c not in leading]
    return pd.DataFrame(rows, columns=ordered)


def format_with_uncertainty(
    mean: float, sem: float | None = None, *, signed: bool = False, decimals: int = 3
) -> str:
    """``mean`` with its error as one significant digit in parentheses: ``0.708(3)``.

    The error is rounded to one significant digit and ``mean`` to the same decimal place
    (``0.7083 ± 0.0031 → "0.708(3)"``, ``99.641 ± 0.012 → "99.64(1)"``,
    ``0.0096`` rounds up to ``0.01``). Errors of 1 or more are written in the units of the
    last shown digit of an integer (``93.2 ± 2.3 → "93(2)"``, ``1234 ± 23 → "1230(20)"``).
    A NaN/None/0 error prints the value alone with ``decimals`` decimals; a NaN mean prints
    ``"—"``. ``signed=True`` always writes the sign (``"+0.03(5)"``, as for TAD).
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)) or not np.isfinite(mean):
        return MISSING
    mean = float(mean)
    sign = "+" if signed else ""
    if sem is None or not np.isfinite(sem) or sem == 0:
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


def render_markdown_table(summary_df: pd.DataFrame, table1_kernel: str = "trntk") -> str:
    """Paper-style Markdown of a seed-aggregated summary (:func:`aggregate_seeds`).

    * Table 1 — one row per experiment for ``table1_kernel``: ``# Models`` (seeds),
      NN test acc (%), TAD (%), τ_K. Omitted when no experiment has that kernel.
    * Table 2 — for every experiment, rows τ_K, TAD (%), R_Miss and one column per kernel
      (paper names: trNTK, trNTK⁰, proj-trNTK, ...), in the order kernels first appear.

    Values carry their standard error in parenthesis notation
    (:func:`format_with_uncertainty`); a missing value is ``—``.
    """
    required = ["experiment", "kernel", "n_seeds", "tau", "tad"]
    missing = [c for c in required if c not in summary_df.columns]
    if missing:
        raise KeyError(f"render_markdown_table: summary lacks column(s) {missing}; "
                       "build it with aggregate_seeds")
    sections: list[str] = []

    table1 = summary_df[summary_df["kernel"] == table1_kernel]
    if len(table1):
        body = [
            [
                str(row["experiment"]),
                str(int(row["n_seeds"])),
                _cell(row, "nn_test_acc", decimals=2),
                _cell(row, "tad", signed=True, decimals=2),
                _cell(row, "tau", decimals=3),
            ]
            for _, row in table1.iterrows()
        ]
        kernel_name = KERNEL_DISPLAY_NAMES.get(table1_kernel, table1_kernel)
        sections.append(
            f"### Table 1: faithfulness of κ = {kernel_name} surrogates\n\n"
            + _markdown(["Model (Dataset)", "# Models", "NN test acc (%)", "TAD (%)", "τ_K"], body)
        )

    kernels = list(dict.fromkeys(summary_df["kernel"]))
    body = []
    for experiment, group in summary_df.groupby("experiment", sort=False):
        by_kernel = {row["kernel"]: row for _, row in group.iterrows()}
        for label, metric, signed, decimals in (
            ("τ_K", "tau", False, 3),
            ("TAD (%)", "tad", True, 2),
            ("R_Miss", "r_miss", False, 2),
        ):
            cells = [
                _cell(by_kernel[k], metric, signed, decimals) if k in by_kernel else MISSING
                for k in kernels
            ]
            body.append([str(experiment) if label == "τ_K" else "", label, *cells])
    header = ["Experiment", "Metric", *[KERNEL_DISPLAY_NAMES.get(k, k) for k in kernels]]
    sections.append("### Table 2: comparison across surrogate kernels\n\n" + _markdown(header, body))
    return "\n\n".join(sections) + "\n"
