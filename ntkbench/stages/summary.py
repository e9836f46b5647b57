"""Stage 4: paper-style tables and the faithfulness figure over every experiment, kernel and seed."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ntkbench import metrics, tables
from ntkbench.plots.summary import plot_faithfulness_summary
from ntkbench.stages.common import InputError, read_json, write_csv
from ntkbench.utils import atomic_write_text, get_logger

log = get_logger(__name__)

__all__ = ["collect_faithfulness", "summary_stage"]


def collect_faithfulness(records: Iterable[tuple[str, int, str, str, str | Path]], split: str = "test") -> pd.DataFrame:
    """One row per (experiment, seed, kernel, kGLM variant) from kGLM report JSON files, each
    checked to be the report of the kernel and variant it is filed under; the rows name the
    solver, alpha and target of the fit."""
    rows = []
    for experiment, seed, kernel, variant, path in records:
        report = read_json(path, required=(split, "solver", "alpha", "target"))
        if report.get("kernel") != kernel or report.get("variant", "default") != variant:
            raise InputError(f"{path}: the kGLM report of kernel {report.get('kernel')!r}, variant "
                             f"{report.get('variant')!r} is filed as {kernel!r}, {variant!r}")
        scores = report[split]
        rows.append({"experiment": experiment, "seed": seed, "kernel": kernel, "variant": variant,
                     "solver": report["solver"], "alpha": report["alpha"], "target": report["target"],
                     **{m: scores.get(m, np.nan) for m in metrics.FAITHFULNESS_KEYS}})
    return pd.DataFrame(rows)


def summary_stage(records: Iterable[tuple[str, int, str, str, str | Path]], out_csv: str | Path,
                  out_per_seed: str | Path, out_markdown: str | Path, out_figure: str | Path) -> pd.DataFrame:
    """Write the per-seed table, the seed-aggregated summary (CSV + Markdown) and the τ figure."""
    per_seed = collect_faithfulness(records)
    summary = tables.aggregate_seeds(per_seed, by=["experiment", "kernel", "variant"],
                                     metrics=list(metrics.FAITHFULNESS_KEYS))
    write_csv(per_seed, out_per_seed)
    write_csv(summary, out_csv)
    atomic_write_text(out_markdown, tables.render_markdown_table(summary))
    plot_faithfulness_summary(summary, out_figure)
    for row in summary.itertuples():
        log.info("%s / %s: tau %.3f ± %.3f, TAD %+.2f", row.experiment, row.kernel, row.tau,
                 row.tau_sem, row.tad)
    return summary
