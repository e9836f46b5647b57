"""Top eigenpairs of one TMS run's flattened eNTK for every β (thin entry point)."""
from ntkbench.stages.spectral import tms_spectrum_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
tms_spectrum_stage(sm.input.model, sm.params.cfg, sm.params.device, sm.output[0])
