"""Loss-gradient attributions (TracIn-CP, Grad-Dot, Grad-Cos, TRAK) of one experiment's network
(logic in ntkbench.stages.attribution.scores)."""
from ntkbench.stages.attribution.scores import gradients_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
gradients_stage(sm.input.data, sm.input.model, sm.params.model, sm.params.train, int(sm.params.seed),
                sm.params.settings, sm.params.device, sm.output[0], subset_paths=list(sm.input.subsets),
                tracin_model_paths=list(sm.input.tracin_models))
