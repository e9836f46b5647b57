# Stage 1: data bundles and trained networks (one per experiment and seed).
from ntkbench.config import experiment_seeds


rule prepare_data:
    output:
        f"{RESULTS}/{{experiment}}/data.npz",
    params:
        spec=lambda w: EXPERIMENTS[w.experiment]["data"],
        data_dir=config["data_dir"],
        code=code_version("ntkbench/data"),
    log:
        f"{RESULTS}/logs/{{experiment}}/prepare_data.log",
    threads: 1
    resources:
        **stage_resources("report"),
    script:
        "../workflow_scripts/prepare_data.py"


rule train:
    input:
        data=rules.prepare_data.output[0],
    output:
        model=f"{RESULTS}/{{experiment}}/seed{{seed}}/model.pt",
        logits=f"{RESULTS}/{{experiment}}/seed{{seed}}/logits.npz",
        history=f"{RESULTS}/{{experiment}}/seed{{seed}}/training.csv",
    params:
        model=lambda w: EXPERIMENTS[w.experiment]["model"],
        train=lambda w: EXPERIMENTS[w.experiment]["train"],
        device=config["device"],
        code=code_version("ntkbench/models", "ntkbench/training/classifier.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/train.tsv"
    threads: stage_threads("train")
    resources:
        **stage_resources("train"),
    script:
        "../workflow_scripts/train.py"
