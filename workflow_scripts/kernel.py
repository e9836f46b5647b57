"""Compute one kernel of one trained network (thin entry point; logic in ntkbench.stages.kernels)."""
from ntkbench.stages.kernels import kernel_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
kernel_stage(sm.input.data, sm.input.model, sm.wildcards.kernel, sm.params.options, sm.params.block_size,
             sm.params.device, sm.output[0], logits_path=sm.input.logits)
