# Stage 4: the zoo leaderboard (issue 23; ntkbench.leaderboard): one row per kernel, ranked per
# architecture on faithfulness (summary), attribution (kGLM LDS), poisoned-data forensics (each
# architecture's BadNet twin) and cost (the kernel jobs' benchmark files), with a heatmap and a
# Pareto figure. Runs when `leaderboard.architectures` names any; nothing in it is data-specific.
from types import SimpleNamespace

LEADERBOARD = config["leaderboard"]
LEADERBOARD_ARCHITECTURES = LEADERBOARD["architectures"]
LEADERBOARD_TWINS = [spec["badnet"] for spec in LEADERBOARD_ARCHITECTURES.values() if spec.get("badnet")]
LEADERBOARD_EXPERIMENTS = [spec["experiment"] for spec in LEADERBOARD_ARCHITECTURES.values()]


def leaderboard_costs(w):
    """The kernel jobs' benchmark files of every clean experiment, seed and kernel (a tiled
    kernel: its tiles' files and the gather job's)."""
    paths = run_paths(f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/kernel_{{kernel}}.tsv", LEADERBOARD_EXPERIMENTS)
    if TILE_SIZE is not None:
        for exp, seed, kernel in runs(LEADERBOARD_EXPERIMENTS):
            tiles = tile_files(SimpleNamespace(experiment=exp, seed=seed, kernel=kernel))
            paths += [f"{RESULTS}/benchmarks/{exp}/seed{seed}/kernel_{kernel}.tiles/{g}.{i}.{j}.tsv"
                      for g, cells in tiles.items() for (i, j) in cells]
    return paths


localrules:
    leaderboard,

rule leaderboard:
    input:
        summary=f"{RESULTS}/summary.csv",
        attribution=f"{RESULTS}/attribution.csv" if set(LEADERBOARD_EXPERIMENTS) & set(ATTRIBUTION_EXPERIMENTS) else [],
        forensics=[f"{RESULTS}/{twin}/forensics.csv" for twin in LEADERBOARD_TWINS],
        attacks=[f"{RESULTS}/{twin}/attack.csv" for twin in LEADERBOARD_TWINS],
        costs=leaderboard_costs,
    output:
        csv=report(update(f"{RESULTS}/zoo/leaderboard.csv"), caption=f"{CAPTIONS}/leaderboard_table.rst",
                   category="Zoo leaderboard"),
        markdown=update(f"{RESULTS}/zoo/leaderboard.md"),
        heatmap=report(update(f"{RESULTS}/zoo/heatmap.png"), caption=f"{CAPTIONS}/leaderboard_heatmap.rst",
                       category="Zoo leaderboard"),
        pareto=report(update(f"{RESULTS}/zoo/pareto.png"), caption=f"{CAPTIONS}/leaderboard_pareto.rst",
                      category="Zoo leaderboard"),
    params:
        settings=LEADERBOARD,
        twins=LEADERBOARD_TWINS,
        kernels=list(dict.fromkeys(k for exp in LEADERBOARD_EXPERIMENTS for k in EXPERIMENTS[exp]["kernels"])),
        num_subsets=ATTRIBUTION["num_subsets"],
        code=script_code("leaderboard.py"),
    log:
        f"{RESULTS}/logs/leaderboard.log",
    benchmark:
        f"{RESULTS}/benchmarks/leaderboard.tsv"
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    script:
        "../workflow_scripts/leaderboard.py"


if LEADERBOARD_ARCHITECTURES:
    ALL_TARGETS += rules.leaderboard.output
