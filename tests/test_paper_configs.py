"""The paper-scale configs (Tables 2 and 3 of paper 001) validate and plan their DAG in seconds
without the data: ``prepare_data`` is a checkpoint, so a dry run with an empty ``data_dir`` plans
every job up to the kernel tiles, which are added once the data bundles exist."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ntkbench.config import ConfigError, experiment_seeds, load_config, load_yaml, validate_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
HAS_SLURM_PLUGIN = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None
ALL_KERNELS = ["trntk", "trntk0", "proj-trntk", "proj-pntk", "em", "ck"]


def dry_run(config: Path | list[Path], workdir: Path) -> str:
    """``snakemake -n`` of the repository's workflow in ``workdir`` with ``config`` and an empty
    data directory, through the SLURM profile when its plugin is installed (so the job sizes
    are resolved as on a cluster); returns stdout + stderr."""
    empty = workdir / "no-data"
    empty.mkdir()
    profile = ["--workflow-profile", str(REPO / "profiles" / "slurm")] if HAS_SLURM_PLUGIN else ["--cores", "2"]
    proc = subprocess.run([str(SNAKEMAKE), "-n", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *profile,
                           "--configfile", *map(str, config if isinstance(config, list) else [config]),
                           "--config", f"data_dir={empty}"],
                          cwd=workdir, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    return text


def job_counts(text: str) -> dict[str, int]:
    block = text[text.index("Job stats:"):]
    counts = {}
    for line in block.splitlines()[3:]:
        match = re.match(r"^([A-Za-z_]\w*)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def rule_resources(text: str, rule: str) -> str:
    """The ``resources:`` line of the first planned job of ``rule``."""
    match = re.search(rf"rule {rule}:\n(?:    .*\n)*?    resources: (.*)", text)
    assert match, f"no planned {rule} job in the dry run"
    return match.group(1)


@pytest.mark.parametrize("name", ["paper_table2.yaml", "paper_table3.yaml"])
def test_paper_config_validates(name):
    cfg = validate_config(load_config(REPO / "configs" / name))
    for exp in cfg["experiments"].values():
        assert exp["kernels"] == ALL_KERNELS                      # all six kernels of Tables 2 and 3
    assert cfg["kernel_options"]["proj_dim"] == 10240 and cfg["kglm"]["solver"] == "sgd"
    assert cfg["kglm"]["class_weight"] == "balanced"
    # The tile grid must line up with the kernel blocks.
    assert cfg["kernel_options"]["tile_size"] % cfg["kernel_options"]["block_size"] == 0
    # data_dir comes from the command line on a cluster: --config data_dir=... overrides it.
    assert validate_config({**load_config(REPO / "configs" / name), "data_dir": "/scratch/d"})["data_dir"] == "/scratch/d"


def test_table2_settings():
    cfg = validate_config(load_config(REPO / "configs" / "paper_table2.yaml"))
    resnet, text = cfg["experiments"]["cifar10-resnet18"], cfg["experiments"]["cola-text"]
    assert resnet["data"] == {"name": "cifar10", "normalize": "meanstd"}
    assert resnet["model"]["name"] == "resnet18" and resnet["kglm"]["alpha"] == 1e-4
    assert text["data"]["name"] == "cola" and text["data"]["max_len"] == 64
    assert text["model"]["name"] == "text-encoder" and text["kglm"]["alpha"] == 1e-2
    assert experiment_seeds(cfg, "cola-text") == [0, 1, 2, 3]


def test_table2_dry_run_without_data(tmp_path):
    text = dry_run(REPO / "configs" / "paper_table2.yaml", tmp_path)
    counts = job_counts(text)
    # 1 ResNet18 seed + 4 CoLA seeds; 6 kernels each, gathered from tiles planned after the data.
    assert counts["prepare_data"] == 2 and counts["train"] == 5
    assert counts["kernel_gather"] == 30 and counts["kglm"] == 30 and counts["summary"] == 1
    assert "forensics" not in counts and "kernel" not in counts   # tiled: no whole-kernel jobs
    assert counts["leaderboard"] == 1   # the same leaderboard rules as the MNIST zoo's
    assert "checkpoint jobs" in text
    if HAS_SLURM_PLUGIN:
        resources = rule_resources(text, "train")
        assert "runtime=480" in resources and "gpu=1" in resources and "slurm_partition=gpu" in resources


def test_table3_dry_run_without_data(tmp_path):
    text = dry_run(REPO / "configs" / "paper_table3.yaml", tmp_path)
    counts = job_counts(text)
    assert counts["prepare_data"] == 1 and counts["train"] == 1 and counts["forensics"] == 1
    assert counts["kernel_gather"] == 6 and counts["kglm"] == 6


def _experiment(data: dict) -> dict:
    model = {"cola": "text-encoder", "cifar10": "resnet18"}.get(data["name"], "mlp")
    return {"experiments": {"e": {"data": data, "model": {"name": model}, "train": {}, "kernels": ["trntk"]}}}


def test_data_defaults_come_from_the_schema_and_match_the_readers():
    import inspect

    from ntkbench.data.text import load_cola

    cola = validate_config(_experiment({"name": "cola"}))["experiments"]["e"]["data"]
    assert cola == {"name": "cola", "max_len": 64, "tokenizer": "word", "vocab": None, "min_freq": 1,
                    "max_vocab": None, "lowercase": True}
    # The reader's keyword defaults (for library use) agree with the schema's.
    params = inspect.signature(load_cola).parameters
    assert {k: params[k].default for k in cola if k != "name"} == {k: v for k, v in cola.items() if k != "name"}
    assert validate_config(_experiment({"name": "cifar10"}))["experiments"]["e"]["data"] == {
        "name": "cifar10", "normalize": "unit"}
    assert validate_config(_experiment({"name": "digits"}))["experiments"]["e"]["data"] == {"name": "digits"}


@pytest.mark.parametrize("data, key", [
    ({"name": "digits", "normalize": "meanstd"}, "normalize"),
    ({"name": "cifar10", "max_len": 32}, "max_len"),
    ({"name": "cola", "classes": [0, 1]}, "classes"),
    ({"name": "cola", "poison": {"target": 0}}, "poison"),
])
def test_keys_of_another_data_set_are_refused_by_name(data, key):
    from ntkbench.config import ConfigError

    with pytest.raises(ConfigError, match=rf"experiments\.e\.data\.{key}: does not apply to this data set"):
        validate_config(_experiment(data))


def test_dattri_benchmark_config_is_dattris_protocol(tmp_path):
    """configs/dattri_mnist.yaml: dattri v0.3.0's MNIST-10 LDS benchmark settings, and its DAG
    (10 subset jobs of 5 networks per model, no mislabel twin, TRAK on the subset networks)."""
    cfg = validate_config(load_config(REPO / "configs" / "dattri_mnist.yaml"))
    lr, mlp = cfg["experiments"]["mnist10-lr"], cfg["experiments"]["mnist10-mlp"]
    for exp in (lr, mlp):
        assert exp["data"] == {"name": "mnist", "first_train": 5000, "first_test": 500, "normalize": "meanstd"}
    assert lr["model"]["hidden"] == [] and lr["train"]["batch_size"] == 32 and lr["train"]["epochs"] == 20
    assert mlp["model"] == {"name": "mlp", "hidden": [128, 64], "parameterisation": "standard", "dropout": 0.1}
    assert mlp["train"]["momentum"] == 0.9 and mlp["train"]["epochs"] == 50 and mlp["train"]["batch_size"] == 64
    att = cfg["attribution"]
    assert (att["num_subsets"], att["fraction"], att["subset_draw"], att["seed_scheme"], att["target"]) == \
        (50, 0.5, "dattri", "offset", "neg_loss")
    assert att["trak"]["ensemble"] == [1, 10, 50] and att["trak"]["proj_dim"] == 512 and att["trak"]["ridge"] == 0
    assert att["gradient_proj_dim"] == 512 and att["tracin"] == {"scheme": "seeds", "models": 10, "weight": 1e-3}
    counts = job_counts(dry_run(REPO / "configs" / "dattri_mnist.yaml", tmp_path))
    assert counts["attribution_subsets"] == 10 and counts["attribution_gradients"] == 2
    assert counts["attribution_lds"] == 2 and "attribution_mislabel" not in counts
    assert counts["attribution_ground_truth"] == 2 and counts["attribution_influence"] == 2
    assert att["influence"]["damping"] == [1.0, 0.1, 0.01, 0.005, 0.001, 1e-4, 1e-5]  # dattri's IF grid
    assert att["published"]["mnist10-lr"]["trak-50"] == 0.68 and att["published"]["mnist10-mlp"]["if"] == 0.26
    assert counts["kernel"] == 11 and counts["kglm"] == 11
    assert counts["train"] == 2 * 10   # the attributed network and TracIn's 9 next seeds, per model
    # TRAK on more subset networks than there are, or beside a mislabel twin, is refused
    bad = load_config(REPO / "configs" / "dattri_mnist.yaml")
    bad["attribution"]["trak"]["ensemble"] = [1, 60]
    bad["attribution"]["mislabel"] = {"fraction": 0.1}
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    assert "60 subset networks" in str(err.value) and "mislabel: null" in str(err.value)


def test_zoo_config_plans_six_architectures_with_twins(tmp_path):
    """configs/zoo_mnist.yaml: six architectures on one MNIST training set, each with a BadNet
    twin, three seeds, every kernel with a kGLM (no em for LR), LDS on 16 subsets each."""
    cfg = validate_config(load_config(REPO / "configs" / "zoo_mnist.yaml"))
    archs = cfg["leaderboard"]["architectures"]
    assert list(archs) == ["LR", "MLP", "CNN", "ResNet", "MobileNetV2", "ViT"]
    models = {cfg["experiments"][a["experiment"]]["model"]["name"] for a in archs.values()}
    assert models == {"mlp", "cnn", "resnet18", "mobilenetv2", "vit"}
    for spec in archs.values():
        clean, twin = cfg["experiments"][spec["experiment"]], cfg["experiments"][spec["badnet"]]
        assert twin["model"] == clean["model"] and twin["train"] == clean["train"] and "poison" in twin["data"]
        assert {k: v for k, v in twin["data"].items() if k != "poison"} == clean["data"]
    assert cfg["attribution"]["num_subsets"] == 16 and cfg["attribution"]["experiments"] == [
        a["experiment"] for a in archs.values()]
    counts = job_counts(dry_run(REPO / "configs" / "zoo_mnist.yaml", tmp_path))
    assert counts["train"] == 36 and counts["forensics"] == 6 and counts["leaderboard"] == 1
    assert counts["kernel"] == counts["kglm"] == 2 * 3 * (6 + 5 * 7)   # clean + twin, 3 seeds, LR has no em


def test_zoo_config_scales_to_full_mnist_by_an_overlay_alone(tmp_path):
    """configs/zoo_mnist_full.yaml, a second --configfile over zoo_mnist.yaml, changes only the
    data sizes (all 60,000 / 10,000 images), the tiles and the job sizes: Snakemake's deep merge
    keeps every architecture's model, recipe, kernels and twin, so the same DAG is planned."""
    from snakemake.utils import update_config

    small, overlay = REPO / "configs" / "zoo_mnist.yaml", REPO / "configs" / "zoo_mnist_full.yaml"
    base = validate_config(load_yaml(small))
    merged = load_yaml(small)
    update_config(merged, load_yaml(overlay))   # what `--configfile small overlay` does
    merged = validate_config(merged)
    assert set(merged["experiments"]) == set(base["experiments"])
    for name, exp in merged["experiments"].items():
        assert (exp["data"]["first_train"], exp["data"]["first_test"]) == (60000, 10000), name
        same = {k: v for k, v in exp["data"].items() if k not in ("first_train", "first_test")}
        assert same == {k: v for k, v in base["experiments"][name]["data"].items() if k not in ("first_train", "first_test")}
        for key in ("model", "train", "kernels", "forensics"):
            assert exp.get(key) == base["experiments"][name].get(key), (name, key)
    assert merged["kernel_options"]["tile_size"] % merged["kernel_options"]["block_size"] == 0
    assert merged["leaderboard"] == base["leaderboard"] and merged["attribution"] == base["attribution"]
    (tmp_path / "full").mkdir()
    (tmp_path / "small").mkdir()
    full = job_counts(dry_run([small, overlay], tmp_path / "full"))
    small_counts = job_counts(dry_run(small, tmp_path / "small"))
    # every kernel becomes a gather of tile jobs (the tiles are planned once the data exist)
    assert full.pop("kernel_gather") == small_counts.pop("kernel") == 246
    assert full == small_counts
