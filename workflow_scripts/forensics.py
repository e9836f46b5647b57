"""Poisoned-data forensics of one experiment over all its seeds and kernels (paper 001 Table 3).

Thin entry point; the logic lives in ntkbench.stages.forensics.
"""
from ntkbench.stages.forensics import forensics_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
runs = [tuple(r) for r in sm.params.runs]  # (seed, kernel), the order of the kernel/kglm inputs
forensics_stage(sm.input.data, list(sm.params.seeds), list(sm.params.kernels), list(sm.input.models),
                list(sm.input.logits), dict(zip(runs, sm.input.kernels, strict=True)),
                dict(zip(runs, sm.input.kglm, strict=True)), sm.params.kernel_options, sm.params.settings,
                dict(sm.output.items()), experiment=sm.wildcards.experiment)
