# Shared helpers for every stage: validated config, result paths, code fingerprints, resources.
from pathlib import Path

from ntkbench.config import validate_config
from ntkbench.utils import code_fingerprint

# Stop at once, naming the offending key, when the config is wrong (also fills defaults).
config = validate_config(config)

RESULTS = "results"
SEEDS = list(config["seeds"])
EXPERIMENTS = config["experiments"]
ALL_TARGETS = []  # each stage appends the files `rule all` must produce

wildcard_constraints:
    experiment="[A-Za-z0-9_.-]+",
    seed=r"\d+",
    kernel="[a-z0-9-]+",


def code_version(*paths):
    """Hash of library code a rule depends on: passed as a param so code edits rerun it."""
    return code_fingerprint(*[Path(workflow.basedir) / p for p in paths])


def stage_resources(stage):
    """Per-stage resources from config (mem_mb, runtime in minutes, gpu count)."""
    return config["resources"][stage]


def stage_threads(stage):
    return config["resources"][stage]["threads"]
