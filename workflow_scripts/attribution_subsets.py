"""Train one group of subset networks for the attribution benchmark's LDS (logic in
ntkbench.stages.attribution.subsets)."""
from ntkbench.stages.attribution.subsets import subsets_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
subsets_stage(sm.input.data, sm.params.model, sm.params.train, int(sm.params.seed), list(sm.params.indices),
              sm.params.settings, sm.params.device, sm.output[0])
