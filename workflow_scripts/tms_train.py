"""Train one TMS model (m, S) (thin entry point)."""
from ntkbench.stages.spectral import tms_train_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
tms_train_stage(sm.params.run, sm.params.cfg, sm.params.device, sm.output.model, sm.output.curve)
