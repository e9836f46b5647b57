"""Top eigenpairs of the full flattened eNTK at the final checkpoint, matrix-free (thin entry point)."""
from ntkbench.stages.spectral import modadd_full_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
modadd_full_stage(sm.input.checkpoints, sm.params.cfg, sm.params.device, sm.output[0])
