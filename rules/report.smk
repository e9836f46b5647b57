# Stage 4: paper-style tables and figures over every experiment, kernel and seed.


# Cheap aggregation: runs in the main Snakemake process (on a cluster, the login node),
# never as a cluster job of its own.
localrules:
    summary,

rule summary:
    input:
        [kglm_report(*fit) for fit in kglm_fits()],
    output:
        csv=report(update(f"{RESULTS}/summary.csv"), caption=f"{CAPTIONS}/summary_table.rst",
                   category="Faithfulness", subcategory="Tables 1-2"),
        per_seed=update(f"{RESULTS}/summary_per_seed.csv"),
        markdown=update(f"{RESULTS}/summary.md"),
        figure=report(update(f"{RESULTS}/summary_tau.png"), caption=f"{CAPTIONS}/summary_tau.rst",
                      category="Faithfulness", subcategory="Tables 1-2"),
    params:
        records=kglm_fits(),
        code=script_code("summary.py"),
    log:
        f"{RESULTS}/logs/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/summary.tsv"
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    script:
        "../workflow_scripts/summary.py"


if EXPERIMENTS:
    ALL_TARGETS += rules.summary.output
