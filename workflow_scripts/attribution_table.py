"""The attribution benchmark's table and figure over its experiments (logic in
ntkbench.stages.attribution.table)."""
from ntkbench.stages.attribution.table import table_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
table_stage(list(sm.input), sm.output.csv, sm.output.markdown, sm.output.figure, published=sm.params.published)
