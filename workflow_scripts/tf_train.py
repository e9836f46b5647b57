"""Train the modular-addition transformer with checkpoints (thin entry point)."""
from ntkbench.stages.spectral_tf import tf_train_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
tf_train_stage(sm.params.cfg, sm.params.device, sm.output.checkpoints, sm.output.curve)
