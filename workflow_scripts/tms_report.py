"""tms.csv and the TMS figures (thin entry point)."""
from ntkbench.stages.spectral import tms_report_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
tms_report_stage(list(sm.input.runs), sm.params.cfg, sm.output.csv, sm.output.spectra, sm.output.heatmaps)
