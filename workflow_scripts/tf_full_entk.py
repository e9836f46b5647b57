"""Top eigenpairs of the transformer's full flattened eNTK at the final checkpoint (thin entry point)."""
from ntkbench.stages.spectral_tf import tf_full_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
tf_full_stage(sm.input.checkpoints, sm.params.cfg, sm.params.device, sm.output[0])
