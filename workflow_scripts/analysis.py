"""Surrogate analysis figures of one experiment: attributions, exemplars, linear realisation
(paper 001 Figures 1-2, appendices L and M). Thin entry point; the logic lives in
ntkbench.stages.analysis."""
from ntkbench.stages.analysis import analysis_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
kernels = list(sm.params.kernels)  # the order of the kernel, kglm_fits and kglm_reports inputs
analysis_stage(sm.wildcards.experiment, sm.input.data, sm.input.model, sm.input.logits, sm.params.seed, kernels,
               dict(zip(kernels, sm.input.kernels, strict=True)), sm.params.kernel_options,
               dict(zip(kernels, sm.input.kglm_fits, strict=True)), dict(zip(kernels, sm.input.kglm_reports, strict=True)),
               sm.params.settings, dict(sm.output.items()))
