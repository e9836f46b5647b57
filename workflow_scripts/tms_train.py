"""Train one TMS model (m, S) (thin entry point; logic in ntkbench.spectral.pipeline)."""
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
from ntkbench.spectral.pipeline import tms_train_stage  # noqa: E402

tms_train_stage(sm.params.run, sm.params.cfg, sm.params.device, sm.output.model, sm.output.curve)
