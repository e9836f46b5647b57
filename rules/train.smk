# Stage 1: data bundles and trained networks (one per experiment and seed).


# Reads the data set and writes one bundle: runs in the main Snakemake process (on a
# cluster, the login node), never as a cluster job of its own.
localrules:
    prepare_data,

checkpoint prepare_data:
    output:
        update(f"{RESULTS}/{{experiment}}/data.npz"),
    params:
        spec=lambda w: EXPERIMENTS[w.experiment]["data"],
        data_dir=config["data_dir"],
        code=script_code("prepare_data.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/prepare_data.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/prepare_data.tsv"
    threads: 1
    resources:
        **stage_resources("report"),
    script:
        "../workflow_scripts/prepare_data.py"


rule train:
    input:
        data=rules.prepare_data.output[0],
        pretrained=pretrained_files,
    output:
        model=update(f"{RESULTS}/{{experiment}}/seed{{seed}}/model.pt"),
        logits=update(f"{RESULTS}/{{experiment}}/seed{{seed}}/logits.npz"),
        history=update(f"{RESULTS}/{{experiment}}/seed{{seed}}/training.csv"),
    params:
        model=lambda w: EXPERIMENTS[w.experiment]["model"],
        train=lambda w: EXPERIMENTS[w.experiment]["train"],
        device=config["device"],
        code=script_code("train.py"),
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/train.tsv"
    threads: stage_threads("train")
    resources:
        **stage_resources("train"),
    script:
        "../workflow_scripts/train.py"
