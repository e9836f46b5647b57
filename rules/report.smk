# Stage 4: paper-style tables and figures over every experiment, kernel and seed.
from ntkbench.config import experiment_seeds


def kglm_reports(wildcards=None):
    return [
        f"{RESULTS}/{exp}/seed{seed}/kglm/{kernel}.json"
        for exp, spec in EXPERIMENTS.items()
        for seed in experiment_seeds(config, exp)
        for kernel in spec["kernels"]
    ]


rule summary:
    input:
        kglm_reports,
    output:
        csv=f"{RESULTS}/summary.csv",
        per_seed=f"{RESULTS}/summary_per_seed.csv",
        markdown=f"{RESULTS}/summary.md",
        figure=f"{RESULTS}/summary_tau.png",
    params:
        records=lambda w: [
            (exp, seed, kernel)
            for exp, spec in EXPERIMENTS.items()
            for seed in experiment_seeds(config, exp)
            for kernel in spec["kernels"]
        ],
        code=code_version("ntkbench/tables.py", "ntkbench/plots.py", "ntkbench/stages.py"),
    log:
        f"{RESULTS}/logs/summary.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    script:
        "../workflow_scripts/summary.py"


ALL_TARGETS += rules.summary.output
