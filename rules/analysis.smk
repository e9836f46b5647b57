# Stage 3d: the surrogate analysis (paper 001 Figures 1-2, appendices L and M), one job per
# experiment of `analysis.experiments` (null = all): for `analysis.test_points` test points of the
# network of one training seed (`analysis.seed`, null = the experiment's first) and every kernel
# with a kGLM (`analysis.kernels`, null = all of them), in results/<experiment>/analysis/:
#   kglm_attribution.png/.csv    attributions A(x, x_i)^c = W_ci k(x, x_i) + b_c/N per training class
#   exemplars.png/.csv/.md       the top_k training points of highest kernel value, per kernel
#   linear_realisation.png/.csv  NN probability against the fitted Phi(kGLM logit), R^2 per Phi
# An experiment's own `analysis:` block overrides these settings key by key.
import re

from ntkbench.config import analysis_experiments, experiment_analysis
from ntkbench.kinds import options_for

ANALYSIS_EXPERIMENTS = analysis_experiments(config)
ANALYSIS_DIR = f"{RESULTS}/{{experiment}}/analysis"


def analysis_paths(w, pattern):
    """``pattern`` ({seed}, {kernel}) for every analysed kernel of the analysed network."""
    settings = experiment_analysis(config, w.experiment)
    return [pattern.format(experiment=w.experiment, seed=settings["seed"], kernel=k) for k in settings["kernels"]]


def analysis_seed_path(w, name):
    return f"{RESULTS}/{w.experiment}/seed{experiment_analysis(config, w.experiment)['seed']}/{name}"


rule analysis:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        model=lambda w: analysis_seed_path(w, "model.pt"),
        logits=lambda w: analysis_seed_path(w, "logits.npz"),
        # in the order of params.kernels
        kernels=lambda w: analysis_paths(w, RESULTS + "/{experiment}/seed{seed}/kernels/{kernel}.h5"),
        kglm_fits=lambda w: analysis_paths(w, RESULTS + "/{experiment}/seed{seed}/kglm/{kernel}.npz"),
        kglm_reports=lambda w: analysis_paths(w, RESULTS + "/{experiment}/seed{seed}/kglm/{kernel}.json"),
    output:
        attribution=report(update(f"{ANALYSIS_DIR}/kglm_attribution.png"), caption=f"{CAPTIONS}/analysis_attribution.rst",
                           category="Surrogate analysis", subcategory="{experiment}"),
        attribution_csv=update(f"{ANALYSIS_DIR}/kglm_attribution.csv"),
        exemplars=report(update(f"{ANALYSIS_DIR}/exemplars.png"), caption=f"{CAPTIONS}/analysis_exemplars.rst",
                         category="Surrogate analysis", subcategory="{experiment}"),
        exemplars_csv=update(f"{ANALYSIS_DIR}/exemplars.csv"),
        exemplars_md=update(f"{ANALYSIS_DIR}/exemplars.md"),
        realisation=report(update(f"{ANALYSIS_DIR}/linear_realisation.png"),
                           caption=f"{CAPTIONS}/analysis_realisation.rst", category="Surrogate analysis",
                           subcategory="{experiment}"),
        realisation_csv=update(f"{ANALYSIS_DIR}/linear_realisation.csv"),
    params:
        seed=lambda w: experiment_analysis(config, w.experiment)["seed"],
        kernels=lambda w: experiment_analysis(config, w.experiment)["kernels"],
        kernel_options=lambda w: {k: options_for(k, config["kernel_options"])
                                  for k in experiment_analysis(config, w.experiment)["kernels"]},
        settings=lambda w: {k: experiment_analysis(config, w.experiment)[k]
                            for k in ("test_points", "selection_seed", "top_k")},
        code=script_code("analysis.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/analysis.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/analysis.tsv"
    wildcard_constraints:
        experiment="|".join(map(re.escape, ANALYSIS_EXPERIMENTS)) or "(?!)",
    # Reads one test x train kernel per kernel and fits three curves: the kGLM stage's footprint.
    threads: stage_threads("surrogates")
    resources:
        **stage_resources("surrogates"),
    script:
        "../workflow_scripts/analysis.py"


ALL_TARGETS += expand(
    [
        f"{ANALYSIS_DIR}/kglm_attribution.png",
        f"{ANALYSIS_DIR}/exemplars.png",
        f"{ANALYSIS_DIR}/linear_realisation.png",
    ],
    experiment=ANALYSIS_EXPERIMENTS,
)
