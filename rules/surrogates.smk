# Stage 3: kernel-GLM surrogates and their faithfulness to the network.
from ntkbench.config import experiment_kglm
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
        kglm=lambda w: experiment_kglm(config, w.experiment),
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
