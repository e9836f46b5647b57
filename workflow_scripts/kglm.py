"""Fit one kernel-GLM surrogate and score its faithfulness (logic in ntkbench.stages)."""
from ntkbench.stages import kglm_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
kglm_stage(sm.input.data, sm.input.logits, sm.input.kernel, sm.params.kglm,
           sm.output.report, sm.output.logits)
