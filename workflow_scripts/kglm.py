"""Fit one kernel-GLM surrogate and score its faithfulness (logic in ntkbench.stages.surrogates)."""
from ntkbench.stages.surrogates import kglm_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
kglm_stage(sm.input.data, sm.input.logits, sm.input.model, sm.input.kernel, sm.wildcards.kernel,
           sm.params.kernel_options, sm.params.kglm, sm.output.report, sm.output.logits, variant=sm.params.variant)
