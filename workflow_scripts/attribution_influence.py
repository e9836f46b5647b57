"""Influence-function scores of the attributed network, one set per damping (logic in
ntkbench.stages.attribution.influence)."""
from ntkbench.stages.attribution.influence import influence_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
influence_stage(sm.input.data, sm.input.model, int(sm.params.seed), sm.params.settings, sm.params.device, sm.output[0])
