"""Compute one tile of a tiled kernel (thin entry point; logic in ntkbench.stages.kernels)."""
from ntkbench.stages.common import job_from_snakemake
from ntkbench.stages.kernels import KernelTileJob, kernel_tile_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
kernel_tile_stage(job_from_snakemake(KernelTileJob, sm))
