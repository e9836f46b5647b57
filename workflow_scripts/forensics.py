"""Poisoned-data forensics of one experiment over all its seeds and kernels (paper 001 Table 3).

Thin entry point; the logic lives in ntkbench.forensics and ntkbench.plots_forensics.
"""
from ntkbench.forensics import FORENSICS_DEFAULTS, run_forensics, write_forensics_outputs
from ntkbench.plots_forensics import plot_forensics_result
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
seeds, kernels, opts = list(sm.params.seeds), list(sm.params.kernels), {**FORENSICS_DEFAULTS, **sm.params.forensics}
# Inputs are listed seed-major, kernel-minor (see rules/forensics.smk).
pairs = [(seed, kernel) for seed in seeds for kernel in kernels]
result = run_forensics(
    sm.input.data, seeds, kernels, list(sm.input.logits),
    kernel_paths=dict(zip(pairs, sm.input.kernels, strict=True)),
    kglm_paths=dict(zip(pairs, sm.input.kglm, strict=True)),
    **opts,
)
write_forensics_outputs(result, sm.output.table, sm.output.per_seed, sm.output.attack,
                        sm.output.markdown)
plot_forensics_result(sm.output.figure, result, sm.input.data, min_poisoned=opts["min_poisoned"],
                      title=f"{sm.wildcards.experiment}: top-{opts['top_k']} training images per kernel "
                            f"for poisoned test images (seed {seeds[0]}; red = poisoned)")
