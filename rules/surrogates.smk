# Stage 3: kernel-GLM surrogates and their faithfulness to the network.
from ntkbench.kinds import options_for


rule kglm:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        model=f"{RESULTS}/{{experiment}}/seed{{seed}}/model.pt",
        logits=f"{RESULTS}/{{experiment}}/seed{{seed}}/logits.npz",
        kernel=f"{RESULTS}/{{experiment}}/seed{{seed}}/kernels/{{kernel}}.h5",
    output:
        report=update(f"{RESULTS}/{{experiment}}/seed{{seed}}/kglm/{{kernel}}.json"),
        logits=update(f"{RESULTS}/{{experiment}}/seed{{seed}}/kglm/{{kernel}}.npz"),
    params:
        kglm=lambda w: experiment_kglm_variants(config, w.experiment)[DEFAULT_VARIANT],
        variant=DEFAULT_VARIANT,
        # What the kernel file must have been computed with (checked before it is used).
        kernel_options=lambda w: options_for(w.kernel, config["kernel_options"]),
        code=script_code("kglm.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/kglm_{{kernel}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/kglm_{{kernel}}.tsv"
    threads: stage_threads("surrogates")
    resources:
        **stage_resources("surrogates"),
    script:
        "../workflow_scripts/kglm.py"


# Further kGLMs of an experiment (kglm.variants, e.g. Table 5's fit to the network's
# predictions, or the exact solver beside SGD): the same job on the same kernel, one file each.
use rule kglm as kglm_variant with:
    output:
        report=update(f"{RESULTS}/{{experiment}}/seed{{seed}}/kglm/{{kernel}}@{{variant}}.json"),
        logits=update(f"{RESULTS}/{{experiment}}/seed{{seed}}/kglm/{{kernel}}@{{variant}}.npz"),
    wildcard_constraints:
        variant="[A-Za-z0-9_-]+",
    params:
        kglm=lambda w: experiment_kglm_variants(config, w.experiment)[w.variant],
        variant=lambda w: w.variant,
        kernel_options=lambda w: options_for(w.kernel, config["kernel_options"]),
        code=script_code("kglm.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/kglm_{{kernel}}@{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/kglm_{{kernel}}@{{variant}}.tsv"
