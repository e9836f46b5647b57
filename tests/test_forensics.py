"""Poisoned-data forensics: the top-k vote, precision/recall, the attack report, Table 3, and
the stage end to end on a tiny poisoned digits experiment."""
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ntkbench.forensics import (TABLE3_COLUMNS, attack_report, attack_success_rate, flag_precision_recall,
                                forensic_flags, forensics_table, kernel_forensics, poisoned_votes,
                                top_k_training_points)

# Six training points, of which 1, 3 and 4 are poisoned; five test points (rows).
POISONED = [1, 3, 4]
KERNEL = np.array([
    [0.9, 0.8, 0.1, 0.7, 0.2, 0.0],   # top-3: 0, 1, 3 -> 2 poisoned
    [0.1, 0.2, 0.9, 0.3, 0.1, 0.8],   # top-3: 2, 5, 3 -> 1 poisoned
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],   # all tied: lowest indices 0, 1, 2 -> 1 poisoned
    [0.0, 1.0, 0.0, 1.0, 1.0, 0.0],   # top-3: 1, 3, 4 -> 3 poisoned
    [0.9, 0.5, 0.5, 0.5, 0.5, 0.1],   # 0 then the tie 1..4 cut at 1, 2 -> 1 poisoned
])


def test_top_k_order_and_tie_rule():
    top = top_k_training_points(KERNEL, 3)
    assert top.tolist() == [[0, 1, 3], [2, 5, 3], [0, 1, 2], [1, 3, 4], [0, 1, 2]]


def test_top_k_matches_a_full_stable_sort_with_many_ties():
    rng = np.random.default_rng(0)
    kernel = rng.integers(0, 4, size=(50, 40)).astype(np.float32)  # heavy ties everywhere
    expected = np.argsort(-kernel, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(top_k_training_points(kernel, 5), expected)


def test_votes_and_flags_on_hand_made_kernel():
    assert poisoned_votes(KERNEL, POISONED, top_k=3).tolist() == [2, 1, 1, 3, 1]
    assert forensic_flags(KERNEL, POISONED, top_k=3, min_poisoned=2).tolist() == [True, False, False, True, False]
    assert forensic_flags(KERNEL, POISONED, top_k=3, min_poisoned=3).tolist() == [False, False, False, True, False]
    # Paper's rule (top 5, at least 3). Top-5s: 0,1,3,4,2 | 2,5,3,1,0 (0 beats 4 on the tie) |
    # 0..4 | 1,3,4,0,2 | 0..4 -> poisoned counts 3, 2, 3, 3, 3.
    assert poisoned_votes(KERNEL, POISONED, top_k=5).tolist() == [3, 2, 3, 3, 3]
    assert forensic_flags(KERNEL, POISONED).tolist() == [True, False, True, True, True]


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 7}, "top_k=7 must lie in 1..6"),
    ({"top_k": 3, "min_poisoned": 4}, "min_poisoned=4 must lie in 1..top_k=3"),
])
def test_rule_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        forensic_flags(KERNEL, POISONED, **kwargs)
    with pytest.raises(ValueError, match="outside 0..5"):
        poisoned_votes(KERNEL, [6])


def test_precision_recall_against_hand_counts():
    flags_clean = np.array([True, False, False, True, False])   # 2 false positives
    flags_poisoned = np.array([True, True, False, True])        # 3 true positives, 1 miss
    precision, recall = flag_precision_recall(flags_clean, flags_poisoned)
    assert precision == pytest.approx(3 / 5) and recall == pytest.approx(3 / 4)
    # Clean test points are KERNEL's rows (flags T F F T F at top-3/2); poisoned test points
    # are the rows 3, 0, 1: flags T T F -> TP 2, FP 2, FN 1.
    scores = kernel_forensics(KERNEL, KERNEL[[3, 0, 1]], POISONED, top_k=3, min_poisoned=2)
    assert scores["precision"] == pytest.approx(50.0) and scores["recall"] == pytest.approx(200 / 3)
    assert (scores["flagged_clean"], scores["flagged_poisoned"]) == (2, 2)


def test_attack_success_rate_and_report():
    # Predictions 4, 4, 1, 4 of four poisoned test images: 3 of 4 hit target 4.
    poisoned_logits = np.eye(5)[[4, 4, 1, 4]] * 3.0
    assert attack_success_rate(poisoned_logits, target=4) == 0.75
    clean_logits = np.eye(5)[[0, 1, 2, 2]]
    report = attack_report({"test_logits": clean_logits, "poisoned_test_logits": poisoned_logits},
                           clean_y=np.array([0, 1, 2, 3]), target=4)
    assert report == {"clean_acc": 0.75, "attack_success_rate": 0.75}


def test_table3_means_and_sems():
    per_seed = pd.DataFrame([
        {"seed": 0, "kernel": "trntk", "precision": 90.0, "recall": 100.0, "tau": 0.5, "tad": 1.0,
         "r_miss": 0.2, "tau_true_class": 0.3, "poi_tau_true_class": 0.2, "poi_tau": 0.4, "poi_tad": -2.0, "poi_r_miss": 0.1},
        {"seed": 1, "kernel": "trntk", "precision": 100.0, "recall": 96.0, "tau": 0.7, "tad": 3.0,
         "r_miss": 0.4, "tau_true_class": 0.5, "poi_tau_true_class": 0.4, "poi_tau": 0.6, "poi_tad": 0.0, "poi_r_miss": 0.3},
        {"seed": 0, "kernel": "ck", "precision": 2.0, "recall": 50.0, "tau": 0.1, "tad": -3.0,
         "r_miss": 0.0, "tau_true_class": 0.1, "poi_tau_true_class": 0.0, "poi_tau": 0.2, "poi_tad": -80.0, "poi_r_miss": 0.0},
    ])
    table = forensics_table(per_seed, kernels=["trntk", "ck"])
    assert tuple(table.columns[:len(TABLE3_COLUMNS)]) == TABLE3_COLUMNS
    trntk = table.set_index("kernel").loc["trntk"]
    # mean of (90, 100) = 95; SEM = sample std / sqrt(2) = 7.0711 / 1.4142 = 5.
    assert trntk["precision"] == pytest.approx(95.0) and trntk["precision_sem"] == pytest.approx(5.0)
    assert trntk["recall"] == pytest.approx(98.0) and trntk["recall_sem"] == pytest.approx(2.0)
    assert trntk["tau"] == pytest.approx(0.6) and trntk["tau_sem"] == pytest.approx(0.1)
    assert trntk["tau_true_class"] == pytest.approx(0.4) and trntk["poi_tau_true_class"] == pytest.approx(0.3)
    assert trntk["poi_tad"] == pytest.approx(-1.0) and trntk["n_seeds"] == 2
    ck = table.set_index("kernel").loc["ck"]
    assert ck["poi_tad"] == -80.0 and ck["n_seeds"] == 1 and np.isnan(ck["poi_tad_sem"])


# ----------------------------------------------------------------------------- end to end
@pytest.fixture()
def one_torch_thread():
    # Other tests and jobs share the CPU; oversubscribed intra-op threads make this 50x slower.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_forensics_stage_end_to_end_on_tiny_config(tmp_path, one_torch_thread, caplog):
    """data -> train -> kernels -> kGLM -> forensics with the real stages on a tiny config."""
    from ntkbench.config import experiment_kglm, experiment_seeds, load_config
    from ntkbench.data import load_dataset, save_bundle
    from ntkbench.kinds import options_for
    from ntkbench.stages.forensics import ForensicsJob, forensics_stage
    from ntkbench.stages.kernels import kernel_stage
    from ntkbench.stages.surrogates import kglm_stage
    from ntkbench.stages.train import train_stage

    cfg = load_config(Path(__file__).parent / "configs" / "forensics_tiny.yaml")
    cfg["kernel_options"].update(proj_dim=256, block_size=64)  # as in the tiny workflow config
    (name, exp), = cfg["experiments"].items()
    seeds, kernels = experiment_seeds(cfg, name), exp["kernels"]
    kopts = {k: options_for(k, cfg["kernel_options"]) for k in kernels}
    data = tmp_path / "data.npz"
    save_bundle(load_dataset(exp["data"]), data)
    kernel_paths, kglm_paths, logits_paths, model_paths = {}, {}, [], []
    for seed in seeds:
        run = tmp_path / f"seed{seed}"
        train_stage(data, exp["model"], exp["train"], seed, "cpu", run / "model.pt",
                    run / "logits.npz", run / "training.csv")
        logits_paths.append(run / "logits.npz")
        model_paths.append(run / "model.pt")
        (run / "kernels").mkdir()  # Snakemake creates output folders; here we do
        (run / "kglm").mkdir()
        for kernel in kernels:
            kernel_paths[seed, kernel] = run / "kernels" / f"{kernel}.h5"
            kglm_paths[seed, kernel] = run / "kglm" / f"{kernel}.json"
            kernel_stage(data, run / "model.pt", kernel, kopts[kernel], 64, "cpu", kernel_paths[seed, kernel])
            kglm_stage(data, run / "logits.npz", run / "model.pt", kernel_paths[seed, kernel], kernel,
                       kopts[kernel], experiment_kglm(cfg, name), kglm_paths[seed, kernel],
                       run / "kglm" / f"{kernel}.npz")
    opts = exp["forensics"]
    out = {k: tmp_path / f for k, f in [("table", "forensics.csv"), ("per_seed", "per_seed.csv"),
                                         ("attack", "attack.csv"), ("markdown", "forensics.md"),
                                         ("figure", "forensics_top_k.png")]}

    def run_stage(settings, kernels=kernels, outputs=out):
        return forensics_stage(ForensicsJob(name, data, seeds, kernels, model_paths, logits_paths, kernel_paths,
                                            kglm_paths, kopts, settings, outputs))

    result = run_stage(opts)
    out["md"], out["png"] = out["markdown"], out["figure"]

    # The attack worked on every seed (the tiny config was chosen so that it does).
    attack = pd.read_csv(out["attack"])
    assert attack["seed"].tolist() == seeds
    assert (attack["attack_success_rate"] >= 0.9).all() and (attack["clean_acc"] >= 0.9).all()
    assert attack["attack_ok"].all()
    # Table 3 layout: one row per kernel in config order, means and SEMs over the two seeds.
    table = pd.read_csv(out["table"])
    assert table["kernel"].tolist() == kernels
    assert list(table.columns[:len(TABLE3_COLUMNS)]) == list(TABLE3_COLUMNS)
    assert (table["n_seeds"] == len(seeds)).all()
    assert table[["precision", "recall"]].apply(lambda c: c.between(0, 100) | c.isna()).all().all()
    # τ_K may be NaN where the kGLM saturates to constant log-probabilities (e.g. trNTK⁰ on
    # the poisoned set, where everything is predicted as the target); never outside [-1, 1].
    for column in ("tau", "poi_tau"):
        assert (table[column].between(-1, 1) | table[column].isna()).all()
    assert table["tau"].notna().sum() >= 4
    # The numbers are recomputable from the files: precision/recall of seed 0's trNTK.
    from ntkbench.data import load_bundle
    from ntkbench.store import read_kernel

    bundle = load_bundle(data)
    seed0 = seeds[0]
    clean = read_kernel(kernel_paths[seed0, "trntk"], "test_train").kernel
    poisoned = read_kernel(kernel_paths[seed0, "trntk"], "poisoned_test_train").kernel
    flags_c = forensic_flags(clean, bundle.extra["poisoned_train_idx"], opts["top_k"], opts["min_poisoned"])
    flags_p = forensic_flags(poisoned, bundle.extra["poisoned_train_idx"], opts["top_k"], opts["min_poisoned"])
    tp, fp = flags_p.sum(), flags_c.sum()
    row = pd.read_csv(out["per_seed"]).query("seed == @seed0 and kernel == 'trntk'").iloc[0]
    assert row["recall"] == pytest.approx(100 * tp / len(flags_p))
    if tp + fp:
        assert row["precision"] == pytest.approx(100 * tp / (tp + fp))
    # A backdoored network's NTK traces poisoned test images to poisoned training images.
    assert row["recall"] > 50
    assert out["png"].stat().st_size > 10_000 and out["md"].read_text().startswith("| Kernel |")

    # When the attack does not reach the configured bar the log says so and attack_ok is False.
    with caplog.at_level(logging.WARNING, logger="ntkbench.forensics"):
        strict = run_stage({**opts, "min_clean_accuracy": 0.999}, kernels[:1],
                           {k: tmp_path / f"strict_{v.name}" for k, v in out.items()})
    assert not strict.attack["attack_ok"].any()
    assert "attack did not work well enough" in caplog.text and "not meaningful" in caplog.text
    assert result.table["kernel"].tolist() == kernels
