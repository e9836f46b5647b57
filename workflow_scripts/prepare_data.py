"""Build the data bundle of one experiment (thin entry point; logic in ntkbench.stages.train)."""
from ntkbench.stages.train import prepare_data_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
prepare_data_stage(sm.params.spec, sm.params.data_dir, sm.output[0])
