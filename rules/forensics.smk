# Stage 3b: poisoned-data forensics (paper 001 section 4, Table 3), one job per experiment
# that has a `forensics:` block, aggregating all its seeds and kernels.
import re

from ntkbench.kinds import options_for

FORENSICS_EXPERIMENTS = [exp for exp, spec in EXPERIMENTS.items() if "forensics" in spec]


rule forensics:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        models=lambda w: seed_paths(w.experiment, f"{RESULTS}/{w.experiment}/seed{{seed}}/model.pt"),
        logits=lambda w: seed_paths(w.experiment, f"{RESULTS}/{w.experiment}/seed{{seed}}/logits.npz"),
        # seed-major, kernel-minor: the order of params.runs
        kernels=lambda w: run_paths(RESULTS + "/{experiment}/seed{seed}/kernels/{kernel}.h5", [w.experiment]),
        kglm=lambda w: run_paths(RESULTS + "/{experiment}/seed{seed}/kglm/{kernel}.json", [w.experiment]),
    output:
        table=report(update(f"{RESULTS}/{{experiment}}/forensics.csv"), caption=f"{CAPTIONS}/forensics_table.rst",
                     category="Forensics", subcategory="{experiment}"),
        per_seed=update(f"{RESULTS}/{{experiment}}/forensics_per_seed.csv"),
        markdown=update(f"{RESULTS}/{{experiment}}/forensics.md"),
        attack=report(update(f"{RESULTS}/{{experiment}}/attack.csv"), caption=f"{CAPTIONS}/attack.rst",
                      category="Forensics", subcategory="{experiment}"),
        figure=report(update(f"{RESULTS}/{{experiment}}/forensics_top_k.png"),
                      caption=f"{CAPTIONS}/forensics_top_k.rst", category="Forensics", subcategory="{experiment}"),
    params:
        seeds=lambda w: experiment_seeds(config, w.experiment),
        kernels=lambda w: EXPERIMENTS[w.experiment]["kernels"],
        runs=lambda w: [(seed, kernel) for _, seed, kernel in runs([w.experiment])],
        kernel_options=lambda w: {k: options_for(k, config["kernel_options"]) for k in EXPERIMENTS[w.experiment]["kernels"]},
        settings=lambda w: EXPERIMENTS[w.experiment]["forensics"],
        code=script_code("forensics.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/forensics.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/forensics.tsv"
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
