# Stage 3c: the data-attribution benchmark (SPEC section 6) on the experiments listed in
# `attribution.experiments`, for the network of one training seed each (`attribution.seed`,
# null = the experiment's first seed). Per experiment:
#   attribution_subsets   M subset networks, `subsets_per_job` per job (the fan-out)
#   attribution_ground_truth  the subsets joined into ground_truth.npz, with its provenance
#   attribution_gradients TracIn-CP, Grad-Dot, Grad-Cos and TRAK scores of the network
#   attribution_influence influence functions (explicit damped Gauss-Newton; attribution.influence)
#   attribution_mislabel  the noisy-label twin (network, kernels and kGLMs computed inside the job)
#   attribution_lds       LDS ± SEM and mislabel AUC of every method, beside the kGLMs' τ
# and attribution_table joins them into results/attribution.csv / .md / .png.
import math
import re

from ntkbench.config import attribution_seed as config_attribution_seed, experiment_kglm, kernels_with_kglm
from ntkbench.kinds import options_for

ATTRIBUTION = config["attribution"]
ATTRIBUTION_EXPERIMENTS = list(ATTRIBUTION["experiments"])
ATTRIBUTION_DIR = f"{RESULTS}/{{experiment}}/attribution"
# Subset jobs: job g trains subsets g*k .. min(M, (g+1)*k) - 1, k = subsets_per_job.
ATTRIBUTION_CHUNKS = math.ceil(ATTRIBUTION["num_subsets"] / ATTRIBUTION["subsets_per_job"])


def attribution_seed(experiment):
    """Training seed of the attributed network of ``experiment``."""
    return config_attribution_seed(config, experiment)


def attribution_kernels(experiment):
    """The experiment's kernels with a kGLM attribution (the (N, N, C, C) eNTK has none)."""
    return kernels_with_kglm(EXPERIMENTS[experiment]["kernels"])


def attribution_settings(*keys):
    return {key: ATTRIBUTION[key] for key in keys}


def attribution_seed_paths(w, pattern):
    """``pattern`` ({seed}, {kernel}) for every attribution kernel of the attributed network."""
    seed = attribution_seed(w.experiment)
    return [pattern.format(experiment=w.experiment, seed=seed, kernel=k) for k in attribution_kernels(w.experiment)]


def tracin_model_paths(w):
    """model.pt of seeds s + 1 .. s + models - 1 for `tracin.scheme: seeds` (s: the attributed
    network's seed, whose model.pt is the gradients job's `model` input), else none."""
    tracin = ATTRIBUTION["tracin"]
    if tracin["scheme"] != "seeds":
        return []
    seed = attribution_seed(w.experiment)
    return [f"{RESULTS}/{w.experiment}/seed{seed + i}/model.pt" for i in range(1, int(tracin["models"]))]


wildcard_constraints:
    chunk=r"\d+",


rule attribution_subsets:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        pretrained=pretrained_files,
    output:
        update(f"{ATTRIBUTION_DIR}/subsets/{{chunk}}.npz"),
    params:
        model=lambda w: EXPERIMENTS[w.experiment]["model"],
        train=lambda w: EXPERIMENTS[w.experiment]["train"],
        seed=lambda w: attribution_seed(w.experiment),
        indices=lambda w: list(range(int(w.chunk) * ATTRIBUTION["subsets_per_job"],
                                     min(ATTRIBUTION["num_subsets"], (int(w.chunk) + 1) * ATTRIBUTION["subsets_per_job"]))),
        settings=dict(attribution_settings("fraction", "subset_seed", "subset_draw", "seed_scheme"),
                      store_weights=ATTRIBUTION["trak"]["ensemble_data"] == "subsets"),
        device=config["device"],
        code=script_code("attribution_subsets.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/attribution/subsets_{{chunk}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/attribution/subsets_{{chunk}}.tsv"
    wildcard_constraints:
        experiment="|".join(map(re.escape, ATTRIBUTION_EXPERIMENTS)) or "(?!)",
    threads: stage_threads("attribution")
    resources:
        **stage_resources("attribution"),
    script:
        "../workflow_scripts/attribution_subsets.py"


rule attribution_ground_truth:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        subsets=expand(f"{ATTRIBUTION_DIR}/subsets/{{chunk}}.npz", chunk=range(ATTRIBUTION_CHUNKS), allow_missing=True),
    output:
        update(f"{ATTRIBUTION_DIR}/ground_truth.npz"),
    params:
        model=lambda w: EXPERIMENTS[w.experiment]["model"],
        train=lambda w: EXPERIMENTS[w.experiment]["train"],
        seed=lambda w: attribution_seed(w.experiment),
        settings=attribution_settings("num_subsets", "fraction", "subset_seed", "subset_draw", "seed_scheme"),
        code=script_code("attribution_ground_truth.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/attribution/ground_truth.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/attribution/ground_truth.tsv"
    wildcard_constraints:
        experiment="|".join(map(re.escape, ATTRIBUTION_EXPERIMENTS)) or "(?!)",
    threads: 1
    resources:
        **stage_resources("attribution"),
    script:
        "../workflow_scripts/attribution_ground_truth.py"


rule attribution_influence:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        model=lambda w: f"{RESULTS}/{w.experiment}/seed{attribution_seed(w.experiment)}/model.pt",
    output:
        update(f"{ATTRIBUTION_DIR}/influence.npz"),
    params:
        seed=lambda w: attribution_seed(w.experiment),
        settings=attribution_settings("influence", "batch_size"),
        device=config["device"],
        code=script_code("attribution_influence.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/attribution/influence.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/attribution/influence.tsv"
    wildcard_constraints:
        experiment="|".join(map(re.escape, ATTRIBUTION_EXPERIMENTS)) or "(?!)",
    threads: stage_threads("attribution")
    resources:
        **stage_resources("attribution"),
    script:
        "../workflow_scripts/attribution_influence.py"


rule attribution_gradients:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        pretrained=pretrained_files,
        model=lambda w: f"{RESULTS}/{w.experiment}/seed{attribution_seed(w.experiment)}/model.pt",
        # TRAK on the LDS subset networks (trak.ensemble_data: subsets) reads them
        subsets=expand(f"{ATTRIBUTION_DIR}/subsets/{{chunk}}.npz", chunk=range(ATTRIBUTION_CHUNKS), allow_missing=True)
        if ATTRIBUTION["trak"]["ensemble_data"] == "subsets" else [],
        # TracIn over seeds (dattri's): the full-data networks of the next seeds, trained by
        # ordinary train jobs (so a cluster fans them out)
        tracin_models=tracin_model_paths,
    output:
        update(f"{ATTRIBUTION_DIR}/gradients.npz"),
    params:
        model=lambda w: EXPERIMENTS[w.experiment]["model"],
        train=lambda w: EXPERIMENTS[w.experiment]["train"],
        seed=lambda w: attribution_seed(w.experiment),
        # train_threads: retrain the attributed network as the train job did (bit for bit)
        settings=dict(attribution_settings("num_checkpoints", "batch_size", "trak", "tracin", "gradient_proj_dim",
                                           "num_subsets", "fraction", "subset_seed", "subset_draw", "seed_scheme",
                                           "target"), train_threads=stage_threads("train")),
        device=config["device"],
        code=script_code("attribution_gradients.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/attribution/gradients.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/attribution/gradients.tsv"
    wildcard_constraints:
        experiment="|".join(map(re.escape, ATTRIBUTION_EXPERIMENTS)) or "(?!)",
    threads: stage_threads("attribution")
    resources:
        **stage_resources("attribution"),
    script:
        "../workflow_scripts/attribution_gradients.py"


rule attribution_mislabel:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        pretrained=pretrained_files,
    output:
        selfinf=update(f"{ATTRIBUTION_DIR}/mislabel.npz"),
        report=update(f"{ATTRIBUTION_DIR}/mislabel.json"),
    params:
        model=lambda w: EXPERIMENTS[w.experiment]["model"],
        train=lambda w: EXPERIMENTS[w.experiment]["train"],
        seed=lambda w: attribution_seed(w.experiment),
        kernels=lambda w: attribution_kernels(w.experiment),
        kernel_options=lambda w: {k: options_for(k, config["kernel_options"]) for k in attribution_kernels(w.experiment)},
        kglm=lambda w: experiment_kglm(config, w.experiment),
        settings=dict(attribution_settings("num_checkpoints", "batch_size", "trak", "tracin", "gradient_proj_dim",
                                           "mislabel"), train_threads=stage_threads("train")),
        device=config["device"],
        code=script_code("attribution_mislabel.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/attribution/mislabel.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/attribution/mislabel.tsv"
    wildcard_constraints:
        experiment="|".join(map(re.escape, ATTRIBUTION_EXPERIMENTS)) or "(?!)",
    threads: stage_threads("attribution")
    resources:
        **stage_resources("attribution"),
    script:
        "../workflow_scripts/attribution_mislabel.py"


rule attribution_lds:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        model=lambda w: f"{RESULTS}/{w.experiment}/seed{attribution_seed(w.experiment)}/model.pt",
        ground_truth=f"{ATTRIBUTION_DIR}/ground_truth.npz",
        # kernel-major, in the order of params.kernels
        kernels=lambda w: attribution_seed_paths(w, RESULTS + "/{experiment}/seed{seed}/kernels/{kernel}.h5"),
        kglm_fits=lambda w: attribution_seed_paths(w, RESULTS + "/{experiment}/seed{seed}/kglm/{kernel}.npz"),
        kglm_reports=lambda w: attribution_seed_paths(w, RESULTS + "/{experiment}/seed{seed}/kglm/{kernel}.json"),
        gradients=f"{ATTRIBUTION_DIR}/gradients.npz",
        mislabel=f"{ATTRIBUTION_DIR}/mislabel.npz" if ATTRIBUTION["mislabel"] is not None else [],
        influence=f"{ATTRIBUTION_DIR}/influence.npz" if ATTRIBUTION["influence"] is not None else [],
    output:
        update(f"{ATTRIBUTION_DIR}/attribution.csv"),
    params:
        seed=lambda w: attribution_seed(w.experiment),
        model=lambda w: EXPERIMENTS[w.experiment]["model"],
        train=lambda w: EXPERIMENTS[w.experiment]["train"],
        kernels=lambda w: attribution_kernels(w.experiment),
        kernel_options=lambda w: {k: options_for(k, config["kernel_options"]) for k in attribution_kernels(w.experiment)},
        settings=attribution_settings("num_subsets", "fraction", "subset_seed", "subset_draw", "seed_scheme", "target",
                                      "signed_similarity"),
        code=script_code("attribution_lds.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/attribution/lds.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/attribution/lds.tsv"
    wildcard_constraints:
        experiment="|".join(map(re.escape, ATTRIBUTION_EXPERIMENTS)) or "(?!)",
    threads: stage_threads("attribution")
    resources:
        **stage_resources("attribution"),
    script:
        "../workflow_scripts/attribution_lds.py"


# Cheap aggregation: runs in the main Snakemake process (on a cluster, the login node),
# never as a cluster job of its own.
localrules:
    attribution_table,

rule attribution_table:
    input:
        expand(f"{ATTRIBUTION_DIR}/attribution.csv", experiment=ATTRIBUTION_EXPERIMENTS),
    output:
        csv=report(update(f"{RESULTS}/attribution.csv"), caption=f"{CAPTIONS}/attribution_table.rst",
                   category="Attribution", subcategory="LDS and mislabel detection"),
        markdown=update(f"{RESULTS}/attribution.md"),
        figure=report(update(f"{RESULTS}/attribution.png"), caption=f"{CAPTIONS}/attribution_figure.rst",
                      category="Attribution", subcategory="LDS and mislabel detection"),
    params:
        published=ATTRIBUTION["published"],
        code=script_code("attribution_table.py"),
    log:
        f"{RESULTS}/logs/attribution_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/attribution_table.tsv"
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    script:
        "../workflow_scripts/attribution_table.py"


if ATTRIBUTION_EXPERIMENTS:
    ALL_TARGETS += rules.attribution_table.output
