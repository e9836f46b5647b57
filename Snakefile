# ntkbench: train a model zoo, compute eNTK-family kernels, fit kernel-GLM surrogates, measure
# their faithfulness, trace poisoned data, and find learned features in eNTK spectra.
# Run with `make run` (embedded default config.yaml) or see docs/cluster.md for SLURM.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless the user names their own with --configfile: theirs then
# replaces it whole (Snakemake would otherwise deep-merge the two, keeping every default
# experiment beside the user's).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/train.smk"
include: "rules/kernels.smk"
include: "rules/surrogates.smk"
include: "rules/forensics.smk"
include: "rules/attribution.smk"
include: "rules/analysis.smk"
include: "rules/leaderboard.smk"
include: "rules/spectral.smk"
include: "rules/spectral_tf.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS,
