"""LDS and mislabel-detection AUC of every attribution method on one experiment (logic in
ntkbench.stages.attribution.lds)."""
from ntkbench.stages.attribution.lds import lds_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
kernels = list(sm.params.kernels)  # the order of the kernel / kglm inputs
lds_stage(sm.wildcards.experiment, sm.input.data, sm.input.model, int(sm.params.seed), list(sm.input.subsets),
          kernels, dict(zip(kernels, sm.input.kernels, strict=True)), sm.params.kernel_options,
          dict(zip(kernels, sm.input.kglm_fits, strict=True)), dict(zip(kernels, sm.input.kglm_reports, strict=True)),
          sm.input.gradients, sm.input.mislabel, sm.params.settings, sm.output[0])
