# Stage: spectral feature identification (SPEC section 4, paper 003).
# TMS: train per (m, S) run -> flattened-eNTK eigen-analysis per run (all betas) -> table + figures.
# Modular addition: train with checkpoints -> class-averaged spectra over all checkpoints, and the
# full flattened eNTK at the final checkpoint -> CSVs + figures. Changing an analysis setting
# (betas, top_k, cliff detector) never retrains; changing the cliff detector reruns only the reports.
import re

from ntkbench.spectral.pipeline import modadd_experiment_config, tms_runs

SPECTRAL = config.get("spectral") or {}
TMS_CFG = SPECTRAL.get("tms")
MODADD_CFG = SPECTRAL.get("modadd")


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) or "(?!x)x"


if TMS_CFG is not None:
    TMS_EXP = TMS_CFG["experiment"]
    TMS_RUNS = tms_runs(TMS_CFG)
    TMS_TRAIN_KEYS = ("n_features", "importance", "num_points", "data_seed", "seed", "lr", "steps")
    TMS_SPECTRUM_KEYS = ("importance", "betas", "top_k", "represented_threshold")

    rule tms_train:
        output:
            model=f"{RESULTS}/{{tms_exp}}/runs/{{run}}/model.pt",
            curve=f"{RESULTS}/{{tms_exp}}/runs/{{run}}/loss.csv",
        wildcard_constraints:
            tms_exp=re.escape(TMS_EXP),
            run=_alternatives(TMS_RUNS),
        params:
            run=lambda w: TMS_RUNS[w.run],
            cfg={k: TMS_CFG[k] for k in TMS_TRAIN_KEYS},
            device=config["device"],
            code=code_version("ntkbench/models/tms.py", "ntkbench/data/tms.py", "ntkbench/training/tms.py"),
        log:
            f"{RESULTS}/logs/{{tms_exp}}/{{run}}/tms_train.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{tms_exp}}/{{run}}/tms_train.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/tms_train.py"

    rule tms_spectrum:
        input:
            model=rules.tms_train.output.model,
        output:
            f"{RESULTS}/{{tms_exp}}/runs/{{run}}/spectrum.npz",
        wildcard_constraints:
            tms_exp=re.escape(TMS_EXP),
            run=_alternatives(TMS_RUNS),
        params:
            cfg={k: TMS_CFG[k] for k in TMS_SPECTRUM_KEYS},
            device=config["device"],
            code=code_version("ntkbench/spectral/eigen.py", "ntkbench/spectral/features.py",
                              "ntkbench/spectral/tms.py", "ntkbench/kernels"),
        log:
            f"{RESULTS}/logs/{{tms_exp}}/{{run}}/tms_spectrum.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{tms_exp}}/{{run}}/tms_spectrum.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/tms_spectrum.py"

    rule tms_report:
        input:
            runs=[f"{RESULTS}/{TMS_EXP}/runs/{run}/spectrum.npz" for run in TMS_RUNS],
        output:
            csv=f"{RESULTS}/{TMS_EXP}/tms.csv",
            spectra=f"{RESULTS}/{TMS_EXP}/figures/tms_spectra.png",
            heatmaps=f"{RESULTS}/{TMS_EXP}/figures/tms_alignment.png",
        params:
            cfg={k: TMS_CFG[k] for k in ("n_features", "num_points", "importance", "represented_threshold", "cliffs")},
            code=code_version("ntkbench/spectral", "ntkbench/plots_spectral.py"),
        log:
            f"{RESULTS}/logs/{TMS_EXP}/tms_report.log",
        threads: 1
        resources:
            **stage_resources("report"),
        script:
            "../workflow_scripts/tms_report.py"

    ALL_TARGETS += list(rules.tms_report.output)


if MODADD_CFG is not None:
    MODADD_EXPS = {name: modadd_experiment_config(MODADD_CFG, name) for name in MODADD_CFG["experiments"]}
    MODADD_TRAIN_KEYS = ("p", "width", "train_fraction", "split_seed", "lr", "weight_decay", "epochs",
                         "checkpoint_every")

    rule modadd_train:
        output:
            checkpoints=f"{RESULTS}/{{mod_exp}}/seed{{seed}}/checkpoints.pt",
            curve=f"{RESULTS}/{{mod_exp}}/seed{{seed}}/training_curve.csv",
        wildcard_constraints:
            mod_exp=_alternatives(MODADD_EXPS),
        params:
            cfg=lambda w: {k: MODADD_EXPS[w.mod_exp][k] for k in MODADD_TRAIN_KEYS},
            device=config["device"],
            code=code_version("ntkbench/models/modmlp.py", "ntkbench/data/modadd.py",
                              "ntkbench/training/modadd.py"),
        log:
            f"{RESULTS}/logs/{{mod_exp}}/seed{{seed}}/modadd_train.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{mod_exp}}/seed{{seed}}/modadd_train.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/modadd_train.py"

    rule modadd_spectra:
        input:
            checkpoints=rules.modadd_train.output.checkpoints,
        output:
            f"{RESULTS}/{{mod_exp}}/seed{{seed}}/class_avg_spectra.npz",
        wildcard_constraints:
            mod_exp=_alternatives(MODADD_EXPS),
        params:
            cfg=lambda w: {k: MODADD_EXPS[w.mod_exp][k] for k in ("top_k", "store_vectors")},
            device=config["device"],
            code=code_version("ntkbench/spectral/eigen.py", "ntkbench/spectral/modadd.py", "ntkbench/kernels"),
        log:
            f"{RESULTS}/logs/{{mod_exp}}/seed{{seed}}/modadd_spectra.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{mod_exp}}/seed{{seed}}/modadd_spectra.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/modadd_spectra.py"

    rule modadd_full_entk:
        input:
            checkpoints=rules.modadd_train.output.checkpoints,
        output:
            f"{RESULTS}/{{mod_exp}}/seed{{seed}}/full_entk_top.npz",
        wildcard_constraints:
            mod_exp=_alternatives(MODADD_EXPS),
        params:
            cfg=lambda w: {"full_top_k": MODADD_EXPS[w.mod_exp]["full_top_k"]},
            device=config["device"],
            code=code_version("ntkbench/spectral/eigen.py", "ntkbench/spectral/operator.py",
                              "ntkbench/spectral/modadd.py"),
        log:
            f"{RESULTS}/logs/{{mod_exp}}/seed{{seed}}/modadd_full_entk.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{mod_exp}}/seed{{seed}}/modadd_full_entk.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/modadd_full_entk.py"

    rule modadd_report:
        input:
            curves=lambda w: [f"{RESULTS}/{w.mod_exp}/seed{s}/training_curve.csv" for s in MODADD_EXPS[w.mod_exp]["seeds"]],
            spectra=lambda w: [f"{RESULTS}/{w.mod_exp}/seed{s}/class_avg_spectra.npz" for s in MODADD_EXPS[w.mod_exp]["seeds"]],
            full=lambda w: [f"{RESULTS}/{w.mod_exp}/seed{s}/full_entk_top.npz" for s in MODADD_EXPS[w.mod_exp]["seeds"]],
        output:
            training_curve=f"{RESULTS}/{{mod_exp}}/training_curve.csv",
            spectra=f"{RESULTS}/{{mod_exp}}/spectra.csv",
            cliffs=f"{RESULTS}/{{mod_exp}}/cliffs.csv",
            overlap=f"{RESULTS}/{{mod_exp}}/overlap.csv",
            full_spectrum=f"{RESULTS}/{{mod_exp}}/full_entk_spectrum.csv",
            spectra_figure=f"{RESULTS}/{{mod_exp}}/figures/spectra.png",
            grokking_figure=f"{RESULTS}/{{mod_exp}}/figures/grokking.png",
            heatmap_figure=f"{RESULTS}/{{mod_exp}}/figures/fourier_heatmaps.png",
            full_figure=f"{RESULTS}/{{mod_exp}}/figures/full_entk_spectrum.png",
        wildcard_constraints:
            mod_exp=_alternatives(MODADD_EXPS),
        params:
            seeds=lambda w: list(MODADD_EXPS[w.mod_exp]["seeds"]),
            cfg=lambda w: {"cliffs": MODADD_EXPS[w.mod_exp]["cliffs"]},
            code=code_version("ntkbench/spectral", "ntkbench/plots_spectral.py"),
        log:
            f"{RESULTS}/logs/{{mod_exp}}/modadd_report.log",
        threads: 1
        resources:
            **stage_resources("report"),
        script:
            "../workflow_scripts/modadd_report.py"

    ALL_TARGETS += [
        f"{RESULTS}/{name}/{leaf}"
        for name in MODADD_EXPS
        for leaf in ("training_curve.csv", "spectra.csv", "cliffs.csv", "overlap.csv", "full_entk_spectrum.csv",
                     "figures/spectra.png", "figures/grokking.png", "figures/fourier_heatmaps.png",
                     "figures/full_entk_spectrum.png")
    ]
