"""The noisy-label twin of one experiment: self-influence of every attribution method for
mislabel detection (logic in ntkbench.stages.attribution.scores)."""
from ntkbench.stages.attribution.scores import mislabel_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
mislabel_stage(sm.input.data, sm.params.model, sm.params.train, int(sm.params.seed), list(sm.params.kernels),
               sm.params.kernel_options, sm.params.kglm, sm.params.settings, sm.params.device,
               sm.output.selfinf, sm.output.report)
