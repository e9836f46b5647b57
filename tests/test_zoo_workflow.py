"""The zoo leaderboard end to end on a tiny zoo (issue 23): two architectures (an MLP and the
vision transformer) on tiny MNIST-format files, each with a BadNet twin, through training,
kernels, kGLMs, the attribution LDS, forensics and the leaderboard; then what an edit of one
architecture's block reruns. The full zoo is configs/zoo_mnist.yaml."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from test_dattri_workflow import run_on_tiny_mnist
from test_workflow import planned_jobs

pytestmark = pytest.mark.slow


def tiny_zoo_config() -> dict:
    data = {"name": "mnist", "first_train": 80, "first_test": 30, "normalize": "meanstd"}
    poisoned = {**data, "poison": {"fraction": 0.2, "target": 7, "size": 4, "colour": 1.0, "corner": "bottom-right",
                                   "seed": 0}}
    forensics = {"top_k": 5, "min_poisoned": 2, "figure_examples": 1, "min_attack_success": 0.5,
                 "min_clean_accuracy": 0.5}
    archs = {"mlp": ({"name": "mlp", "hidden": [32]}, {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 20,
                                                        "batch_size": 16}),
             "vit": ({"name": "vit", "patch": 7, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32},
                     {"optimizer": "adam", "lr": 3e-3, "epochs": 20, "batch_size": 16})}
    experiments = {}
    for name, (model, train) in archs.items():
        experiments[f"zoo-{name}"] = {"seeds": [0, 1], "data": data, "model": model, "train": train,
                                      "kernels": ["trntk", "ck"]}
        experiments[f"zoo-{name}-badnet"] = {"seeds": [0], "data": poisoned, "model": model, "train": train,
                                             "kernels": ["trntk", "ck"], "forensics": forensics}
    return {"device": "cpu", "data_dir": "data", "experiments": experiments,
            "kernel_options": {"proj_dim": 32, "batch_size": 64, "block_size": 64},
            "attribution": {"experiments": ["zoo-mlp", "zoo-vit"], "num_subsets": 4, "subsets_per_job": 4,
                            "trak": {"proj_dim": 16}, "mislabel": None},
            "analysis": {"experiments": []},
            "leaderboard": {"architectures": {"MLP": {"experiment": "zoo-mlp", "badnet": "zoo-mlp-badnet"},
                                              "ViT": {"experiment": "zoo-vit", "badnet": "zoo-vit-badnet"}}}}


def test_tiny_zoo_leaderboard_end_to_end(tmp_path):
    cfg = tiny_zoo_config()
    work = run_on_tiny_mnist(tmp_path, cfg)
    zoo = work / "results" / "zoo"
    table = pd.read_csv(zoo / "leaderboard.csv")
    assert sorted(table["kernel"]) == ["ck", "trntk"]
    for arch in ("MLP", "ViT"):
        for metric in ("tau", "tau_true_class", "tad", "r_miss", "r2", "lds", "precision", "recall",
                       "kernel_cpu_s", "kernel_peak_mb"):
            assert f"{arch}:{metric}" in table and f"{arch}:{metric}_rank" in table, (arch, metric)
        assert table[f"{arch}:tau"].between(-1, 1).all() and table[f"{arch}:lds"].between(-1, 1).all()
        assert (table[f"{arch}:kernel_cpu_s"] > 0).all() and table[f"{arch}:tau_rank"].isin([1, 2]).all()
    # the leaderboard's values are the summary's and the attribution table's
    summary = pd.read_csv(work / "results" / "summary.csv")
    tau = summary[(summary["experiment"] == "zoo-vit") & (summary["kernel"] == "ck")]["tau"].iloc[0]
    assert table.set_index("kernel").loc["ck", "ViT:tau"] == pytest.approx(tau)
    attribution = pd.read_csv(work / "results" / "attribution.csv")
    lds = attribution[(attribution["experiment"] == "zoo-mlp") & (attribution["method"] == "kglm")
                      & (attribution["kernel"] == "trntk")]["lds"].iloc[0]
    assert table.set_index("kernel").loc["trntk", "MLP:lds"] == pytest.approx(lds)
    text = (zoo / "leaderboard.md").read_text()
    assert "network test accuracy" in text and "zoo-vit-badnet" in text and "4 subset networks" in text
    assert "% attack success" in text and "**At a glance**" in text
    assert table["zoo:tau_mean"].between(-1, 1).all() and table.set_index("kernel").loc["trntk", "zoo:cpu_vs_trntk_median"] == 1.0
    for figure in ("heatmap.png", "pareto.png"):
        assert (zoo / figure).stat().st_size > 20_000

    # editing one architecture's block (its training recipe, shared by its twin as in
    # configs/zoo_mnist.yaml) reruns that architecture's jobs and what aggregates them, only
    cfg["experiments"]["zoo-vit"]["train"]["epochs"] = 21
    assert cfg["experiments"]["zoo-vit-badnet"]["train"]["epochs"] == 21
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(work)
    # zoo-vit's 2 seeds and its twin's 1, 2 kernels each; the MLP's 3 networks are not retrained
    assert (jobs.get("train"), jobs.get("kernel"), jobs.get("kglm"), jobs.get("forensics")) == (3, 6, 6, 1)
    assert jobs.get("attribution_subsets") == 1 and jobs.get("attribution_lds") == 1 and jobs.get("leaderboard") == 1
    assert "prepare_data" not in jobs
