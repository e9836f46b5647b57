"""Attribution stage: the joined table (CSV, Markdown) and figure over the experiments."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ntkbench.plots.attribution import method_label, plot_attribution_summary
from ntkbench.stages.attribution.common import TABLE_COLUMNS
from ntkbench.stages.common import InputError, write_csv
from ntkbench.tables import format_with_uncertainty
from ntkbench.utils import atomic_write_text

__all__ = ["table_markdown", "table_stage"]


def table_markdown(table: pd.DataFrame) -> str:
    """Methods (rows) × experiments (column groups LDS, AUC, τ_K, τ true class); LDS with
    its SEM in parenthesis notation."""
    experiments = list(dict.fromkeys(table["experiment"]))
    df = table.copy()
    df["kernel"] = df["kernel"].fillna("")
    df["label"] = [method_label(m, k) for m, k in zip(df["method"], df["kernel"])]
    labels = list(dict.fromkeys(df["label"]))
    header = ["Method"] + [f"{exp}: {col}" for exp in experiments for col in ("LDS", "AUC", "τ_K", "τ true")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        cells = [label]
        for exp in experiments:
            sub = df[(df["label"] == label) & (df["experiment"] == exp)]
            if sub.empty:
                cells += ["—"] * 4
                continue
            r = sub.iloc[0]
            cells += [format_with_uncertainty(r["lds"], r["lds_sem"]), format_with_uncertainty(r["auc"], None),
                      format_with_uncertainty(r["tau"], None), format_with_uncertainty(r["tau_true_class"], None)]
        lines.append("| " + " | ".join(cells) + " |")
    settings = table.drop_duplicates("experiment").set_index("experiment")
    notes = [f"- {exp}: network of seed {int(r['seed'])}; LDS over M = {int(r['lds_n_subsets'])} subsets of "
             f"fraction {r['fraction']:g} (model seeds: {r['seed_scheme']}; target: {TARGET_NAMES[r['target']]}), "
             f"mean ± SEM over test points; "
             + (f"AUC of self-influence for {int(r['n_flipped'])} flipped training labels (0.5 = chance)"
                if int(r["n_flipped"]) > 0 else "no noisy-label twin (attribution.mislabel: null), no AUC")
             for exp, r in settings.iterrows()]
    return ("\n".join(lines) + "\n\nτ_K, τ true: faithfulness of the kGLM whose attribution is scored (reference "
            "and true-class Kendall τ, test set).\n" + "\n".join(notes) + "\n")


#: How the notes name each LDS target.
TARGET_NAMES = {"margin": "true-class test margin", "neg_loss": "negated test loss"}


def table_stage(paths: Sequence[str | Path], out_csv: str | Path, out_markdown: str | Path,
                out_figure: str | Path) -> pd.DataFrame:
    """Join the per-experiment tables into the attribution table (CSV, Markdown) and figure."""
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
    atomic_write_text(out_markdown, table_markdown(table))
    plot_attribution_summary(table, out_figure)
    return table
