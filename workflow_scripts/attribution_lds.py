"""LDS and mislabel-detection AUC of every attribution method on one experiment (logic in
ntkbench.stages.attribution.lds)."""
from ntkbench.stages.attribution.lds import LdsJob, lds_stage
from ntkbench.stages.common import job_from_snakemake
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
lds_stage(job_from_snakemake(LdsJob, sm))
