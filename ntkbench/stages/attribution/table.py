"""Attribution stage: the joined table (CSV, Markdown) and figure over the experiments."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ntkbench.plots.attribution import method_label, method_order, plot_attribution_summary, published_column
from ntkbench.stages.attribution.common import TABLE_COLUMNS
from ntkbench.stages.common import InputError, write_csv
from ntkbench.tables import format_with_uncertainty
from ntkbench.utils import atomic_write_text

__all__ = ["table_markdown", "table_stage"]


def table_markdown(table: pd.DataFrame, published: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """Methods (rows) × experiments (column groups LDS, AUC, τ_K, τ true class, and the
    published LDS where ``published`` (``{experiment: {method: LDS}}``) has any for the
    experiment); LDS with its SEM in parenthesis notation."""
    experiments = list(dict.fromkeys(table["experiment"]))
    df = table.copy()
    df["kernel"] = df["kernel"].fillna("")
    df["label"] = [method_label(m, k) for m, k in zip(df["method"], df["kernel"])]
    df["published"] = published_column(df, published)
    df = df.iloc[np.argsort([method_order(str(m)) for m in df["method"]], kind="stable")]
    labels = list(dict.fromkeys(df["label"]))
    published = published or {}
    columns = {exp: ("LDS",) + (("published",) if published.get(exp) else ()) + ("AUC", "τ_K", "τ true")
               for exp in experiments}
    header = ["Method"] + [f"{exp}: {col}" for exp in experiments for col in columns[exp]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        cells = [label]
        for exp in experiments:
            sub = df[(df["label"] == label) & (df["experiment"] == exp)]
            if sub.empty:
                cells += ["—"] * len(columns[exp])
                continue
            r = sub.iloc[0]
            cells.append(format_with_uncertainty(r["lds"], r["lds_sem"]))
            if "published" in columns[exp]:
                cells.append(f"{r['published']:.2f}" if r["published"] == r["published"] else "—")
            cells += [format_with_uncertainty(r["auc"], None), format_with_uncertainty(r["tau"], None),
                      format_with_uncertainty(r["tau_true_class"], None)]
        lines.append("| " + " | ".join(cells) + " |")
    settings = table.drop_duplicates("experiment").set_index("experiment")
    notes = [f"- {exp}: network of seed {int(r['seed'])}; LDS over M = {int(r['lds_n_subsets'])} subsets of "
             f"fraction {r['fraction']:g} (model seeds: {r['seed_scheme']}; target: {TARGET_NAMES[r['target']]}), "
             f"mean ± SEM over test points; "
             + (f"AUC of self-influence for {int(r['n_flipped'])} flipped training labels (0.5 = chance)"
                if int(r["n_flipped"]) > 0 else "no noisy-label twin (attribution.mislabel: null), no AUC")
             for exp, r in settings.iterrows()]
    for exp in experiments:
        has_if = table[(table["experiment"] == exp)]["method"].astype(str).str.startswith("if@").any()
        if "if" in published.get(exp, {}) and not has_if:
            notes.append(f"- {exp}: the published influence-function LDS ({published[exp]['if']:.2f}) has no row "
                         "here (attribution.influence off, or the network is over its max_params)")
    if any(published.get(exp) for exp in experiments):
        notes.append("- published: the LDS its authors report for the same method and model, on their own ground "
                     "truth and networks (attribution.published); IF: beside our best damping, as they report the best of "
                     "their grid")
    return ("\n".join(lines) + "\n\nτ_K, τ true: faithfulness of the kGLM whose attribution is scored (reference "
            "and true-class Kendall τ, test set).\n" + "\n".join(notes) + "\n")


#: How the notes name each LDS target.
TARGET_NAMES = {"margin": "true-class test margin", "neg_loss": "negated test loss"}


def table_stage(paths: Sequence[str | Path], out_csv: str | Path, out_markdown: str | Path,
                out_figure: str | Path, published: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """Join the per-experiment tables into the attribution table (CSV, Markdown) and figure;
    ``published`` LDS values (``{experiment: {method: LDS}}``) are shown beside them."""
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path, keep_default_na=False, na_values=["", "NaN", "nan"])
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise InputError(f"{path}: not a readable attribution table ({err})") from err
        missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
        if missing or frame.empty:
            raise InputError(f"{path}: an empty table or missing columns {missing}")
        frame["kernel"] = frame["kernel"].fillna("").astype(str)
        frames.append(frame[TABLE_COLUMNS])
    if not frames:
        raise ValueError("no attribution tables to join")
    table = pd.concat(frames, ignore_index=True)
    if table.duplicated(["experiment", "method", "kernel"]).any():
        raise InputError("an (experiment, method, kernel) row appears twice")
    write_csv(table, out_csv)
    atomic_write_text(out_markdown, table_markdown(table, published))
    plot_attribution_summary(table, out_figure, published=published)
    return table
