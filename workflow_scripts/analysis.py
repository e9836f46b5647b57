"""Surrogate analysis figures of one experiment: attributions, exemplars, linear realisation
(paper 001 Figures 1-2, appendices L and M). Thin entry point; the logic lives in
ntkbench.stages.analysis."""
from ntkbench.stages.analysis import AnalysisJob, analysis_stage
from ntkbench.stages.common import job_from_snakemake
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
analysis_stage(job_from_snakemake(AnalysisJob, sm))
