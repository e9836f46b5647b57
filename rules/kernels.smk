# Stage 2: eNTK-family kernels, one HDF5 file per (experiment, seed, kernel).
from ntkbench.stages import kernel_options_for


rule kernel:
    input:
        data=f"{RESULTS}/{{experiment}}/data.npz",
        model=f"{RESULTS}/{{experiment}}/seed{{seed}}/model.pt",
    output:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/kernels/{{kernel}}.h5",
    params:
        # Only the options this kind depends on, so e.g. changing proj_dim reruns proj-* only.
        options=lambda w: kernel_options_for(w.kernel, config["kernel_options"]),
        block_size=config["kernel_options"]["block_size"],  # layout only: same numbers
        device=config["device"],
        code=code_version("ntkbench/kernels", "ntkbench/store.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/kernel_{{kernel}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/kernel_{{kernel}}.tsv"
    threads: stage_threads("kernels")
    resources:
        **stage_resources("kernels"),
    script:
        "../workflow_scripts/kernel.py"
