# Stage 3b: poisoned-data forensics (paper 001 section 4, Table 3), one job per experiment
# that has a `forensics:` block, aggregating all its seeds and kernels.
import re

from ntkbench.config import experiment_seeds

FORENSICS_EXPERIMENTS = [exp for exp, spec in EXPERIMENTS.items() if "forensics" in spec]


def forensics_inputs(experiment, pattern):
    """One path per (seed, kernel), seed-major, kernel-minor (the order the script expects)."""
    return [
        pattern.format(experiment=experiment, seed=seed, kernel=kernel)
        for seed in experiment_seeds(config, experiment)
        for kernel in EXPERIMENTS[experiment]["kernels"]
    ]


rule forensics:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        logits=lambda w: [
            f"{RESULTS}/{w.experiment}/seed{seed}/logits.npz"
            for seed in experiment_seeds(config, w.experiment)
        ],
        kernels=lambda w: forensics_inputs(
            w.experiment, RESULTS + "/{experiment}/seed{seed}/kernels/{kernel}.h5"
        ),
        kglm=lambda w: forensics_inputs(
            w.experiment, RESULTS + "/{experiment}/seed{seed}/kglm/{kernel}.json"
        ),
    output:
        table=f"{RESULTS}/{{experiment}}/forensics.csv",
        per_seed=f"{RESULTS}/{{experiment}}/forensics_per_seed.csv",
        markdown=f"{RESULTS}/{{experiment}}/forensics.md",
        attack=f"{RESULTS}/{{experiment}}/attack.csv",
        figure=f"{RESULTS}/{{experiment}}/forensics_top_k.png",
    params:
        seeds=lambda w: experiment_seeds(config, w.experiment),
        kernels=lambda w: EXPERIMENTS[w.experiment]["kernels"],
        forensics=lambda w: EXPERIMENTS[w.experiment]["forensics"],
        code=code_version(
            "ntkbench/forensics.py",
            "ntkbench/plots_forensics.py",
            "ntkbench/metrics.py",
            "ntkbench/tables.py",
            "ntkbench/plots.py",
        ),
    log:
        f"{RESULTS}/logs/{{experiment}}/forensics.log",
    wildcard_constraints:
        # Only experiments with a `forensics:` block ("(?!)" matches nothing when there are none).
        experiment="|".join(map(re.escape, FORENSICS_EXPERIMENTS)) or "(?!)",
    threads: stage_threads("forensics")
    resources:
        **stage_resources("forensics"),
    script:
        "../workflow_scripts/forensics.py"


ALL_TARGETS += expand(
    [
        f"{RESULTS}/{{experiment}}/forensics.csv",
        f"{RESULTS}/{{experiment}}/forensics_top_k.png",
        f"{RESULTS}/{{experiment}}/attack.csv",
    ],
    experiment=FORENSICS_EXPERIMENTS,
)
