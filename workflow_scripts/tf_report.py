"""CSVs and figures of one transformer experiment (thin entry point)."""
from ntkbench.stages.spectral_tf import tf_report_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
tf_report_stage(sm.input.curve, sm.input.spectra, sm.input.full, sm.params.cfg, dict(sm.output.items()))
