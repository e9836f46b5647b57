# Stage: spectral feature identification (SPEC section 4, paper 003).
# TMS: train per (m, S) run -> flattened-eNTK eigen-analysis per run (all betas) -> table + figures.
# Modular addition: train with checkpoints -> class-averaged spectra over all checkpoints, and the
# full flattened eNTK at the final checkpoint -> CSVs + figures. Each rule's params hold only the
# settings its stage reads (ntkbench.stages.layout.STAGE_SETTINGS): changing an analysis setting
# (betas, top_k, the cliff detector) never retrains, and the cliff detector reruns only the reports.
import re

from ntkbench.stages.layout import modadd_experiment_config, settings, tms_runs

SPECTRAL = config.get("spectral") or {}
TMS_CFG = SPECTRAL.get("tms")
MODADD_CFG = SPECTRAL.get("modadd")


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) or "(?!x)x"


if TMS_CFG is not None:
    TMS_EXP = TMS_CFG["experiment"]
    TMS_RUNS = tms_runs(TMS_CFG)

    rule tms_train:
        output:
            model=update(f"{RESULTS}/{{tms_exp}}/runs/{{run}}/model.pt"),
            curve=update(f"{RESULTS}/{{tms_exp}}/runs/{{run}}/loss.csv"),
        wildcard_constraints:
            tms_exp=re.escape(TMS_EXP),
            run=_alternatives(TMS_RUNS),
        params:
            run=lambda w: TMS_RUNS[w.run],
            cfg=settings("tms_train", TMS_CFG),
            device=config["device"],
            code=script_code("tms_train.py"),
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
            update(f"{RESULTS}/{{tms_exp}}/runs/{{run}}/spectrum.npz"),
        wildcard_constraints:
            tms_exp=re.escape(TMS_EXP),
            run=_alternatives(TMS_RUNS),
        params:
            cfg=settings("tms_spectrum", TMS_CFG),
            device=config["device"],
            code=script_code("tms_spectrum.py"),
        log:
            f"{RESULTS}/logs/{{tms_exp}}/{{run}}/tms_spectrum.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{tms_exp}}/{{run}}/tms_spectrum.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/tms_spectrum.py"

    # Cheap aggregation: runs in the main Snakemake process (on a cluster, the login node),
    # never as a cluster job of its own.
    localrules:
        tms_report,

    rule tms_report:
        input:
            runs=[f"{RESULTS}/{TMS_EXP}/runs/{run}/spectrum.npz" for run in TMS_RUNS],
        output:
            csv=report(update(f"{RESULTS}/{TMS_EXP}/tms.csv"), caption=f"{CAPTIONS}/tms_table.rst",
                       category="Spectral", subcategory=TMS_EXP),
            spectra=report(update(f"{RESULTS}/{TMS_EXP}/figures/tms_spectra.png"),
                           caption=f"{CAPTIONS}/tms_spectra.rst", category="Spectral", subcategory=TMS_EXP),
            heatmaps=report(update(f"{RESULTS}/{TMS_EXP}/figures/tms_alignment.png"),
                            caption=f"{CAPTIONS}/tms_alignment.rst", category="Spectral", subcategory=TMS_EXP),
        params:
            cfg=settings("tms_report", TMS_CFG),
            code=script_code("tms_report.py"),
        log:
            f"{RESULTS}/logs/{TMS_EXP}/tms_report.log",
        benchmark:
            f"{RESULTS}/benchmarks/{TMS_EXP}/tms_report.tsv"
        threads: 1
        resources:
            **stage_resources("report"),
        script:
            "../workflow_scripts/tms_report.py"

    ALL_TARGETS += list(rules.tms_report.output)


if MODADD_CFG is not None:
    MODADD_EXPS = {name: modadd_experiment_config(MODADD_CFG, name) for name in MODADD_CFG["experiments"]}
    # output key: (file, caption in ntkbench/resources/captions/ or None when not shown in the report)
    MODADD_REPORT = {
        "training_curve": ("training_curve.csv", None),
        "spectra": ("spectra.csv", None),
        "cliffs": ("cliffs.csv", "modadd_table.rst"),
        "overlap": ("overlap.csv", "modadd_table.rst"),
        "full_spectrum": ("full_entk_spectrum.csv", None),
        "spectra_figure": ("figures/spectra.png", "modadd_spectra.rst"),
        "grokking_figure": ("figures/grokking.png", "modadd_grokking.rst"),
        "heatmap_figure": ("figures/fourier_heatmaps.png", "modadd_heatmaps.rst"),
        "full_figure": ("figures/full_entk_spectrum.png", "modadd_full.rst"),
    }

    def modadd_output(leaf, caption):
        path = update(f"{RESULTS}/{{mod_exp}}/{leaf}")
        if caption is None:
            return path
        return report(path, caption=f"{CAPTIONS}/{caption}", category="Spectral", subcategory="{mod_exp}")

    def modadd_seed_paths(w, leaf):
        return [f"{RESULTS}/{w.mod_exp}/seed{s}/{leaf}" for s in MODADD_EXPS[w.mod_exp]["seeds"]]

    rule modadd_train:
        output:
            checkpoints=update(f"{RESULTS}/{{mod_exp}}/seed{{seed}}/checkpoints.pt"),
            curve=update(f"{RESULTS}/{{mod_exp}}/seed{{seed}}/training_curve.csv"),
        wildcard_constraints:
            mod_exp=_alternatives(MODADD_EXPS),
        params:
            cfg=lambda w: settings("modadd_train", MODADD_EXPS[w.mod_exp]),
            device=config["device"],
            code=script_code("modadd_train.py"),
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
            update(f"{RESULTS}/{{mod_exp}}/seed{{seed}}/class_avg_spectra.npz"),
        wildcard_constraints:
            mod_exp=_alternatives(MODADD_EXPS),
        params:
            cfg=lambda w: settings("modadd_spectra", MODADD_EXPS[w.mod_exp]),
            device=config["device"],
            code=script_code("modadd_spectra.py"),
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
            update(f"{RESULTS}/{{mod_exp}}/seed{{seed}}/full_entk_top.npz"),
        wildcard_constraints:
            mod_exp=_alternatives(MODADD_EXPS),
        params:
            cfg=lambda w: settings("modadd_full_entk", MODADD_EXPS[w.mod_exp]),
            device=config["device"],
            code=script_code("modadd_full_entk.py"),
        log:
            f"{RESULTS}/logs/{{mod_exp}}/seed{{seed}}/modadd_full_entk.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{mod_exp}}/seed{{seed}}/modadd_full_entk.tsv"
        threads: stage_threads("spectral")
        resources:
            **stage_resources("spectral"),
        script:
            "../workflow_scripts/modadd_full_entk.py"

    # Cheap aggregation: runs in the main Snakemake process (on a cluster, the login node),
    # never as a cluster job of its own.
    localrules:
        modadd_report,

    rule modadd_report:
        input:
            curves=lambda w: modadd_seed_paths(w, "training_curve.csv"),
            spectra=lambda w: modadd_seed_paths(w, "class_avg_spectra.npz"),
            full=lambda w: modadd_seed_paths(w, "full_entk_top.npz"),
        output:
            **{key: modadd_output(leaf, caption) for key, (leaf, caption) in MODADD_REPORT.items()},
        wildcard_constraints:
            mod_exp=_alternatives(MODADD_EXPS),
        params:
            seeds=lambda w: list(MODADD_EXPS[w.mod_exp]["seeds"]),
            cfg=lambda w: settings("modadd_report", MODADD_EXPS[w.mod_exp]),
            code=script_code("modadd_report.py"),
        log:
            f"{RESULTS}/logs/{{mod_exp}}/modadd_report.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{mod_exp}}/modadd_report.tsv"
        threads: 1
        resources:
            **stage_resources("report"),
        script:
            "../workflow_scripts/modadd_report.py"

    ALL_TARGETS += [f"{RESULTS}/{name}/{leaf}" for name in MODADD_EXPS for leaf, _ in MODADD_REPORT.values()]
