"""Aggregate every kGLM report into the paper-style summary (logic in ntkbench.stages.summary)."""
from ntkbench.stages.summary import summary_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
records = [(*fit, path) for fit, path in zip(sm.params.records, sm.input, strict=True)]
summary_stage(records, sm.output.csv, sm.output.per_seed, sm.output.markdown, sm.output.figure)
