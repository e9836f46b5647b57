# Shared helpers for every stage: validated config, result paths, code fingerprints, resources.
# Only torch-free modules are imported here, so parsing the Snakefile stays fast.
from importlib import resources
from pathlib import Path

from ntkbench.config import (DEFAULT_VARIANT, check_config_files, experiment_kglm_variants, experiment_seeds,
                             validate_config)
from ntkbench.provenance import code_fingerprint

# Stop at once, naming the offending key, when the config is wrong (also fills the schema's defaults).
# Snakemake's own YAML reader lets the later of two equal keys win, so the files it read (the
# embedded config.yaml or the --configfile ones) are first re-read refusing duplicates.
check_config_files(workflow.configfiles)
config = validate_config(config)

RESULTS = "results"
# The report's captions ship in the package (ntkbench/resources/captions), like the schema.
CAPTIONS = str(resources.files("ntkbench") / "resources" / "captions")
EXPERIMENTS = config["experiments"]
ALL_TARGETS = []  # each stage appends the files `rule all` must produce

wildcard_constraints:
    experiment="[A-Za-z0-9_.-]+",
    seed=r"\d+",
    kernel="[a-z0-9-]+",


def script_code(script):
    """Hash of a workflow script's library import closure (paths relative to the repository):
    passed as a param, so editing any module the script imports reruns exactly that rule."""
    return code_fingerprint(Path(workflow.basedir) / "workflow_scripts" / script, workflow.basedir)


def pretrained_files(w):
    """The files of the experiment's pretrained checkpoint (a `huggingface` model's `path`, a
    text encoder's `checkpoint` directory), as inputs of the rules that build the network: new
    weights there rerun those rules and everything downstream. None for other models."""
    spec = EXPERIMENTS[w.experiment]["model"]
    folder = spec.get("path") if spec.get("name") == "huggingface" else spec.get("checkpoint")
    if not folder:
        return []
    folder = Path(folder)
    # A missing folder is reported by Snakemake as a missing input, naming config.json.
    return sorted(str(p) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [str(folder / "config.json")]


def stage_resources(stage):
    """Per-stage resources from config (mem_mb, runtime in minutes, gpu count), threads left out."""
    return {k: v for k, v in config["resources"][stage].items() if k != "threads"}


def stage_threads(stage):
    return config["resources"][stage]["threads"]

# Outputs are wrapped in update(...): Snakemake then neither deletes a previous good output
# before the job runs nor loses it when the job fails (it keeps a backup and restores it).
# Stages write atomically, so an output is only ever replaced by a finished new file.


def runs(experiments=None):
    """(experiment, seed, kernel) of every kGLM fit, experiment-major, seed, then kernel."""
    return [
        (exp, seed, kernel)
        for exp in (EXPERIMENTS if experiments is None else experiments)
        for seed in experiment_seeds(config, exp)
        for kernel in EXPERIMENTS[exp]["kernels"]
    ]


def run_paths(pattern, experiments=None):
    """``pattern`` (with {experiment}, {seed}, {kernel}) for every run of ``runs``."""
    return [pattern.format(experiment=e, seed=s, kernel=k) for e, s, k in runs(experiments)]


def seed_paths(experiment, pattern):
    """``pattern`` (with {seed}) for every training seed of ``experiment``."""
    return [pattern.format(seed=s) for s in experiment_seeds(config, experiment)]


def kglm_report(experiment, seed, kernel, variant):
    """The kGLM report of one fit: kglm/<kernel>.json, or kglm/<kernel>@<variant>.json."""
    suffix = "" if variant == DEFAULT_VARIANT else f"@{variant}"
    return f"{RESULTS}/{experiment}/seed{seed}/kglm/{kernel}{suffix}.json"


def kglm_fits():
    """(experiment, seed, kernel, variant) of every kGLM fit the summary tabulates."""
    return [(e, s, k, v) for e, s, k in runs() for v in experiment_kglm_variants(config, e)]
