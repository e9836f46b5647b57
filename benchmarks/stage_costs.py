"""Cost per stage of a finished workflow run, from the jobs' own ``benchmark:`` files.

Every rule writes ``results/benchmarks/<experiment>/[seed<s>/|attribution/]<job>.tsv``
(Snakemake's benchmark directive: wall seconds ``s``, ``cpu_time``, ``max_rss`` in MB, the
mean load). This script groups them by experiment and stage (the job name without its
chunk number: ``subsets_0`` … ``subsets_9`` are one stage, ``kernel_trntk`` stays its own)
and writes one Markdown table: jobs, summed wall and CPU seconds, and the largest peak
memory. The summed wall time is the time on one core; with ``--cores c`` the run took at
least (summed wall) / c.

    python benchmarks/stage_costs.py results --out benchmarks/runs/<date>_dattri_costs.md
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd


def read_costs(results: Path) -> pd.DataFrame:
    """One row per benchmark file: experiment, stage, job, s, cpu_time, max_rss."""
    rows = []
    root = results / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        frame = pd.read_csv(path, sep="\t")
        if frame.empty:
            continue
        last = frame.iloc[-1]  # a job benchmarked with repeats: the last run
        experiment = rel.parts[0] if len(rel.parts) > 1 else "(all)"
        stage = re.sub(r"_\d+$", "", path.stem)
        if "attribution" in rel.parts[1:-1]:
            stage = f"attribution_{stage}"
        rows.append({"experiment": experiment, "stage": stage, "job": str(rel.with_suffix("")), "s": float(last["s"]),
                     "cpu_time": float(last["cpu_time"]), "max_rss": float(last["max_rss"])})
    if not rows:
        raise SystemExit(f"no benchmark files under {root}")
    return pd.DataFrame(rows)


def cost_table(costs: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, stage): jobs, wall s, CPU s (sums) and peak RSS (max), plus totals."""
    table = costs.groupby(["experiment", "stage"], sort=False).agg(
        jobs=("job", "size"), wall_s=("s", "sum"), cpu_s=("cpu_time", "sum"), peak_rss_mb=("max_rss", "max"))
    table = table.reset_index()
    total = pd.DataFrame([{"experiment": "total", "stage": "", "jobs": int(table["jobs"].sum()),
                           "wall_s": table["wall_s"].sum(), "cpu_s": table["cpu_s"].sum(),
                           "peak_rss_mb": table["peak_rss_mb"].max()}])
    return pd.concat([table, total], ignore_index=True)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| experiment | stage | jobs | wall s (sum) | CPU s (sum) | peak RSS MB |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.experiment} | {r.stage} | {r.jobs} | {r.wall_s:.0f} | {r.cpu_s:.0f} | {r.peak_rss_mb:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the run's results folder")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    args = parser.parse_args()
    text = markdown(cost_table(read_costs(args.results)))
    if args.out:
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
