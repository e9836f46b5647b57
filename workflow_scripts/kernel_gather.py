"""Gather the tiles of one kernel into its HDF5 file (thin entry point; logic in ntkbench.stages.kernels)."""
from ntkbench.stages.kernels import kernel_gather_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
tiles = {group: {(i, j): path for i, j, path in cells} for group, cells in sm.params.tiles.items()}
kernel_gather_stage(sm.input.data, sm.input.model, sm.wildcards.kernel, sm.params.options, sm.params.block_size,
                    sm.params.tile_size, tiles, sm.params.device, sm.output[0],
                    logits_path=sm.input.logits)
