"""Poisoned-data forensics of one experiment over all its seeds and kernels (paper 001 Table 3).

Thin entry point; the logic lives in ntkbench.stages.forensics.
"""
from ntkbench.stages.common import job_from_snakemake
from ntkbench.stages.forensics import ForensicsJob, forensics_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
forensics_stage(job_from_snakemake(ForensicsJob, sm))
