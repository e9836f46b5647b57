"""Train one network of the zoo for one seed (thin entry point; logic in ntkbench.stages.train)."""
from ntkbench.stages.train import train_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
train_stage(sm.input.data, sm.params.model, sm.params.train, int(sm.wildcards.seed),
            sm.params.device, sm.output.model, sm.output.logits, sm.output.history)
