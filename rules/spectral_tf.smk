# Stage: eNTK spectra of a 1-layer transformer on modular addition through grokking
# (SPEC section 4.2, last bullet; issue 15). train with checkpoints -> class-averaged spectra per
# layer group at every checkpoint, and the full flattened eNTK at the final one -> CSVs + figures.
# Each rule's params hold only the settings its stage reads (TF_STAGE_SETTINGS).
import re

from ntkbench.config import modadd_experiment_config

TF_CFG = (config.get("spectral") or {}).get("modadd_tf")

TF_STAGE_SETTINGS = {
    "tf_train": ("p", "d_model", "d_mlp", "heads", "layer_norm", "equals_token", "train_fraction", "split_seed",
                 "seed", "lr", "weight_decay", "betas", "batch_size", "epochs", "checkpoint_every",
                 "allow_divergence"),
    "tf_spectra": ("top_k", "store_vectors"),
    "tf_full_entk": ("full_top_k",),
    "tf_report": ("cliffs", "overlap_windows", "grok_level", "seed"),
}


def tf_settings(stage, block):
    return {key: block[key] for key in TF_STAGE_SETTINGS[stage] if key in block}


if TF_CFG is not None:
    TF_EXPS = {name: modadd_experiment_config(TF_CFG, name) for name in TF_CFG["experiments"]}
    TF_EXP_RE = "|".join(re.escape(n) for n in TF_EXPS)
    # output key: (file, caption in ntkbench/resources/captions/ or None when not shown in the report)
    TF_REPORT = {
        "training_curve": ("training_curve.csv", None),
        "spectra": ("spectra.csv", None),
        "cliffs": ("cliffs.csv", "tf_tables.rst"),
        "overlap": ("overlap.csv", "tf_tables.rst"),
        "alignment": ("alignment.csv", "tf_tables.rst"),
        "full_spectrum": ("full_entk_spectrum.csv", None),
        "spectra_figure": ("figures/spectra.png", "tf_spectra.rst"),
        "grokking_figure": ("figures/grokking.png", "tf_grokking.rst"),
        "heatmap_figure": ("figures/fourier_alignment.png", "tf_alignment.rst"),
        "full_figure": ("figures/full_entk_spectrum.png", "tf_full.rst"),
    }

    def tf_output(leaf, caption):
        path = update(f"{RESULTS}/{{tf_exp}}/{leaf}")
        if caption is None:
            return path
        return report(path, caption=f"{CAPTIONS}/{caption}", category="Spectral", subcategory="{tf_exp}")

    rule tf_train:
        output:
            checkpoints=update(f"{RESULTS}/{{tf_exp}}/checkpoints.pt"),
            curve=update(f"{RESULTS}/{{tf_exp}}/train_curve.csv"),
        wildcard_constraints:
            tf_exp=TF_EXP_RE,
        params:
            cfg=lambda w: tf_settings("tf_train", TF_EXPS[w.tf_exp]),
            device=config["device"],
            code=script_code("tf_train.py"),
        log:
            f"{RESULTS}/logs/{{tf_exp}}/tf_train.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{tf_exp}}/tf_train.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/tf_train.py"

    rule tf_spectra:
        input:
            checkpoints=rules.tf_train.output.checkpoints,
        output:
            update(f"{RESULTS}/{{tf_exp}}/class_avg_spectra.npz"),
        wildcard_constraints:
            tf_exp=TF_EXP_RE,
        params:
            cfg=lambda w: tf_settings("tf_spectra", TF_EXPS[w.tf_exp]),
            device=config["device"],
            code=script_code("tf_spectra.py"),
        log:
            f"{RESULTS}/logs/{{tf_exp}}/tf_spectra.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{tf_exp}}/tf_spectra.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/tf_spectra.py"

    rule tf_full_entk:
        input:
            checkpoints=rules.tf_train.output.checkpoints,
        output:
            update(f"{RESULTS}/{{tf_exp}}/full_entk_top.npz"),
        wildcard_constraints:
            tf_exp=TF_EXP_RE,
        params:
            cfg=lambda w: tf_settings("tf_full_entk", TF_EXPS[w.tf_exp]),
            device=config["device"],
            code=script_code("tf_full_entk.py"),
        log:
            f"{RESULTS}/logs/{{tf_exp}}/tf_full_entk.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{tf_exp}}/tf_full_entk.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/tf_full_entk.py"

    # Cheap aggregation: runs in the main Snakemake process (on a cluster, the login node),
    # never as a cluster job of its own.
    localrules:
        tf_report,

    rule tf_report:
        input:
            curve=rules.tf_train.output.curve,
            spectra=rules.tf_spectra.output[0],
            full=rules.tf_full_entk.output[0],
        output:
            **{key: tf_output(leaf, caption) for key, (leaf, caption) in TF_REPORT.items()},
        wildcard_constraints:
            tf_exp=TF_EXP_RE,
        params:
            cfg=lambda w: tf_settings("tf_report", TF_EXPS[w.tf_exp]),
            code=script_code("tf_report.py"),
        log:
            f"{RESULTS}/logs/{{tf_exp}}/tf_report.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{tf_exp}}/tf_report.tsv"
        threads: 1
        resources:
            **stage_resources("report"),
        script:
            "../workflow_scripts/tf_report.py"

    ALL_TARGETS += [f"{RESULTS}/{name}/{leaf}" for name in TF_EXPS for leaf, _ in TF_REPORT.values()]
