# Stage 3: kernel-GLM surrogates and their faithfulness to the network.
from ntkbench.config import experiment_kglm


rule kglm:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        logits=f"{RESULTS}/{{experiment}}/seed{{seed}}/logits.npz",
        kernel=f"{RESULTS}/{{experiment}}/seed{{seed}}/kernels/{{kernel}}.h5",
    output:
        report=f"{RESULTS}/{{experiment}}/seed{{seed}}/kglm/{{kernel}}.json",
        logits=f"{RESULTS}/{{experiment}}/seed{{seed}}/kglm/{{kernel}}.npz",
    params:
        kglm=lambda w: experiment_kglm(config, w.experiment),
        code=code_version("ntkbench/surrogate.py", "ntkbench/metrics.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/kglm_{{kernel}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/kglm_{{kernel}}.tsv"
    threads: stage_threads("surrogates")
    resources:
        **stage_resources("surrogates"),
    script:
        "../workflow_scripts/kglm.py"
