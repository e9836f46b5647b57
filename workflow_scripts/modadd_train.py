"""Train the modular-addition MLP with checkpoints (thin entry point)."""
from ntkbench.stages.spectral import modadd_train_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
modadd_train_stage(sm.params.cfg, int(sm.wildcards.seed), sm.params.device, sm.output.checkpoints, sm.output.curve)
