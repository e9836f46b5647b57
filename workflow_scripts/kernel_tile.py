"""Compute one tile of a tiled kernel (thin entry point; logic in ntkbench.stages.kernels)."""
from ntkbench.stages.kernels import kernel_tile_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
w = sm.wildcards
kernel_tile_stage(sm.input.data, sm.input.model, w.kernel, sm.params.options, sm.params.block_size,
                  sm.params.tile_size, w.group, (int(w.i), int(w.j)), sm.params.device, sm.output[0],
                  logits_path=sm.input.logits)
