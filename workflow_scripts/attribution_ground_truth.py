"""Join the subset jobs' files into the experiment's LDS ground truth, with its provenance
(logic in ntkbench.stages.attribution.ground_truth)."""
from ntkbench.stages.attribution.ground_truth import ground_truth_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
ground_truth_stage(sm.input.data, list(sm.input.subsets), sm.params.model, sm.params.train, int(sm.params.seed),
                   sm.params.settings, sm.output[0])
