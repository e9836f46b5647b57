"""tms.csv and the TMS figures (thin entry point)."""
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
from ntkbench.spectral.pipeline import tms_report_stage  # noqa: E402

tms_report_stage(list(sm.input.runs), sm.params.cfg, sm.output.csv, sm.output.spectra, sm.output.heatmaps)
