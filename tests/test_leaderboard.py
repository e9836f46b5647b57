"""The zoo leaderboard's ranking, gathering and figures on hand-made tables (issue 23)."""
import numpy as np
import pandas as pd
import pytest

from ntkbench.leaderboard import at_a_glance, leaderboard, leaderboard_markdown, long_table, rank_within_sem
from ntkbench.plots.leaderboard import pareto_front, plot_heatmaps, plot_pareto
from ntkbench.stages.common import InputError
from ntkbench.stages.leaderboard import read_kernel_costs


def test_ranks_share_within_one_sem_and_ignore_order():
    mean, sem = [0.50, 0.49, 0.30, np.nan, 0.52], [0.02, 0.01, 0.01, 0.1, 0.0]
    ranks = rank_within_sem(mean, sem)
    # 0.52 / 0.50 / 0.49 lie within one SEM of their neighbours: none is better by more than it
    assert ranks[[0, 1, 4]].tolist() == [1, 2, 1] and ranks[2] == 4 and np.isnan(ranks[3])
    order = [4, 2, 0, 3, 1]
    np.testing.assert_array_equal(rank_within_sem(np.take(mean, order), np.take(sem, order)), np.take(ranks, order))
    assert rank_within_sem([3.0, 1.0, 2.0], [0, 0, 0], higher_is_better=False).tolist() == [3, 1, 2]


def _inputs():
    summary = pd.DataFrame([
        {"experiment": e, "variant": "default", "kernel": k, "tau": t, "tau_sem": 0.01, "tau_true_class": t - 0.1,
         "tau_true_class_sem": 0.01, "tad": tad, "tad_sem": 0.1, "r_miss": 0.5, "r_miss_sem": 0.05, "r2_linear": -0.5,
         "r2_linear_sem": 0.01, "r2_logistic": r2, "r2_logistic_sem": 0.02, "nn_test_acc": 95.0, "nn_test_acc_sem": 0.5, "n_seeds": 2}
        for e, k, t, tad, r2 in [("a", "trntk", 0.8, -1.0, 0.4), ("a", "ck", 0.6, 0.5, 0.2), ("b", "trntk", 0.7, 0.0, -0.9),
                                 ("b", "ck", 0.75, 2.0, -0.3)]])
    attribution = pd.DataFrame([{"experiment": "a", "method": m, "kernel": k, "lds": v, "lds_sem": 0.01}
                                for m, k, v in [("kglm", "trntk", 0.3), ("kglm", "ck", 0.2), ("grad-dot", "", 0.9)]])
    forensics = {"a-bad": pd.DataFrame({"kernel": ["trntk", "ck"], "precision": [100.0, 90.0], "precision_sem": [0, 1],
                                        "recall": [100.0, 100.0], "recall_sem": [0, 0]})}
    costs = pd.DataFrame([{"experiment": e, "seed": s, "kernel": k, "wall_s": w, "cpu_s": w, "peak_mb": 100}
                          for e in "ab" for s in (0, 1) for k, w in [("trntk", 10.0 + s), ("ck", 1.0 + s)]])
    archs = {"A": {"experiment": "a", "badnet": "a-bad"}, "B": {"experiment": "b", "badnet": None}}
    return summary, attribution, forensics, costs, archs


def test_long_table_and_leaderboard_values_ranks_and_means(tmp_path):
    summary, attribution, forensics, costs, archs = _inputs()
    long = long_table(summary, archs, attribution, forensics, costs)
    assert set(long[long["architecture"] == "B"]["metric"]) == {"tau", "tau_true_class", "tad", "r_miss",
                                                                 "r2", "kernel_wall_s", "kernel_cpu_s",
                                                                 "kernel_peak_mb"}
    cpu = long[(long.architecture == "A") & (long.kernel == "trntk") & (long.metric == "kernel_cpu_s")].iloc[0]
    assert cpu["mean"] == 10.5 and cpu["sem"] == pytest.approx(0.5)  # mean ± SEM over the two seeds
    table = leaderboard(long, ["trntk", "ck"]).set_index("kernel")
    assert table.loc["trntk", "A:tau_rank"] == 1 and table.loc["ck", "A:tau_rank"] == 2
    assert table.loc["ck", "B:tau_rank"] == 1 and table.loc["trntk", "B:tau_rank"] == 2
    assert table.loc["trntk", "B:tad_rank"] == 1 and table.loc["ck", "B:tad_rank"] == 2  # |TAD|: 0 beats 2
    assert table.loc["trntk", "A:tad_rank"] == 2  # |−1.0| > |0.5|
    assert table.loc["trntk", "A:lds"] == 0.3 and table.loc["ck", "A:precision_rank"] == 2
    assert table.loc["ck", "mean_cost_rank"] == 1 and table.loc["trntk", "mean_cost_rank"] == 2
    # realisation R²: architecture a's best Φ is the logistic (mean 0.3 > -0.5), b's the linear (-0.5 > -0.6)
    r2 = long[long.metric == "r2"].set_index(["architecture", "kernel"])
    assert r2.loc[("A", "ck"), "mean"] == 0.2 and r2.loc[("A", "ck"), "sem"] == 0.02
    assert r2.loc[("B", "ck"), "mean"] == -0.5 and table.loc["trntk", "A:r2_rank"] == 1
    # a true-class τ equal to the reference τ is not ranked a second time
    summary.loc[summary.experiment == "b", "tau_true_class"] = summary.loc[summary.experiment == "b", "tau"]
    table_b = leaderboard(long_table(summary, archs, attribution, forensics, costs), ["trntk", "ck"]).set_index("kernel")
    assert np.isnan(table_b.loc["ck", "B:tau_true_class_rank"]) and table_b.loc["ck", "A:tau_true_class_rank"] == 2
    assert table_b.loc["ck", "B:tau_true_class"] == 0.75
    quality = long[long.metric.isin(["tau", "tau_true_class", "tad", "r_miss", "r2", "lds", "precision",
                                     "recall"])]
    assert quality.groupby("kernel").size()["trntk"] == 13  # 5 summary metrics x 2 + LDS + precision + recall
    text = leaderboard_markdown(leaderboard(long, ["trntk", "ck"]), ["A", "B"], ["tau", "lds", "kernel_cpu_s"], ["n"])
    assert "| trntk | 0.800 ± 0.010 (1) | 0.700 ± 0.010 (2) |" in text and "over test points" in text
    plot_heatmaps(long, ["trntk", "ck"], ["A", "B"], tmp_path / "h.png")
    plot_pareto(long, ["trntk", "ck"], ["A", "B"], tmp_path / "p.png")
    assert (tmp_path / "h.png").stat().st_size > 10_000 and (tmp_path / "p.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="no rows of experiment 'c'"):
        long_table(summary, {"C": {"experiment": "c"}})


def test_pareto_front():
    cost = np.array([1.0, 2.0, 3.0, 2.5, np.nan])
    tau = np.array([0.5, 0.7, 0.6, 0.9, 1.0])
    assert pareto_front(cost, tau).tolist() == [True, True, False, True, False]


def test_kernel_costs_sum_tiles_and_refuse_bad_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    base = tmp_path / "benchmarks" / "e" / "seed1"
    (base / "kernel_trntk.tiles").mkdir(parents=True)
    (base / "kernel_trntk.tsv").write_text(header + "2.0\t0:00:02\t100\t0\t0\t0\t0\t0\t50\t1.5\n")
    (base / "kernel_trntk.tiles" / "train_train.0.0.tsv").write_text(header + "10\t0\t300\t0\t0\t0\t0\t0\t0\t9\n")
    (base / "kernel_trntk.tiles" / "train_train.0.1.tsv").write_text(header + "20\t0\t200\t0\t0\t0\t0\t0\t0\t19\n")
    costs = read_kernel_costs(sorted(base.rglob("*.tsv")))
    assert costs.to_dict("records") == [{"experiment": "e", "seed": 1, "kernel": "trntk", "wall_s": 32.0,
                                         "cpu_s": 29.5, "peak_mb": 300.0}]
    (base / "kernel_ck.tsv").write_text("")
    with pytest.raises(InputError, match="kernel_ck.tsv: unreadable"):
        read_kernel_costs([base / "kernel_ck.tsv"])
    with pytest.raises(InputError, match="not a kernel job's benchmark file"):
        read_kernel_costs([tmp_path / "train.tsv"])


def test_config_checks_name_the_architecture():
    from ntkbench.config import ConfigError, validate_config

    exp = {"data": {"name": "digits"}, "model": {"name": "mlp"}, "train": {}, "kernels": ["trntk"]}
    with pytest.raises(ConfigError, match="leaderboard.architectures.A.badnet: 'e' has no forensics block"):
        validate_config({"experiments": {"e": exp}, "leaderboard": {"architectures": {"A": {"experiment": "e",
                                                                                             "badnet": "e"}}}})
    with pytest.raises(ConfigError, match="leaderboard.architectures.A.experiment: 'x' is not an experiment"):
        validate_config({"experiments": {"e": exp}, "leaderboard": {"architectures": {"A": {"experiment": "x"}}}})


def test_a_twin_whose_backdoor_failed_is_shown_but_not_ranked():
    summary, attribution, forensics, costs, archs = _inputs()
    attacks = {"a-bad": pd.DataFrame({"seed": [0, 1], "clean_acc": [0.9, 0.7], "attack_success_rate": [1.0, 0.95],
                                      "attack_ok": [True, False]})}
    long = long_table(summary, archs, attribution, forensics, costs, attacks)
    assert not long[long.metric.isin(["precision", "recall"])]["ranked"].any() and long[long.metric == "tau"]["ranked"].all()
    table = leaderboard(long, ["trntk", "ck"]).set_index("kernel")
    assert table.loc["ck", "A:precision"] == 90.0 and np.isnan(table.loc["ck", "A:precision_rank"])
    # the mean rank leaves the unranked metrics out: trntk has 5 x 2 summary ranks + LDS
    ranked = long[long.ranked & long.metric.isin(["tau", "tau_true_class", "tad", "r_miss", "r2", "lds"])]
    assert ranked.groupby("kernel").size()["trntk"] == 11
    assert "| trntk | 100.000 ± 0.000 |" in leaderboard_markdown(leaderboard(long, ["trntk", "ck"]), ["A"], ["precision"])
    # every attack ok: ranked again
    attacks["a-bad"]["attack_ok"] = True
    table = leaderboard(long_table(summary, archs, attribution, forensics, costs, attacks), ["trntk", "ck"])
    assert table.set_index("kernel").loc["ck", "A:precision_rank"] == 2


def test_accuracy_note_names_each_twin_seed_and_a_failed_gate():
    from ntkbench.stages.leaderboard import _accuracy_note

    summary, *_ = _inputs()
    attack = pd.DataFrame({"seed": [0, 1], "clean_acc": [0.9, 0.7], "attack_success_rate": [1.0, 0.95],
                           "attack_ok": [True, False]})
    note = _accuracy_note("A", {"experiment": "a", "badnet": "a-bad"}, summary, attack)
    assert note.startswith("A (experiment a): network test accuracy 95.00 ± 0.50 % over 2 seeds; realisation R² of "
                           "the logistic Φ; poisoned twin a-bad")
    assert "seed 1 70.0 % clean / 95.0 % attack success" in note and "on seed(s) [1]" in note
    assert "failed" not in _accuracy_note("A", {"experiment": "a", "badnet": "a-bad"}, summary, attack.iloc[:1])


def test_at_a_glance_averages_over_architectures_and_compares_cost_with_the_reference():
    summary, attribution, forensics, costs, archs = _inputs()
    long = long_table(summary, archs, attribution, forensics, costs)
    glance = at_a_glance(long, ["trntk", "ck"]).set_index("kernel")
    assert glance.loc["ck", ["tau_mean", "tau_min", "tau_max"]].tolist() == pytest.approx([0.675, 0.6, 0.75])
    assert glance.loc["trntk", "lds_mean"] == 0.3 and glance.loc["ck", "n_architectures"] == 2  # LDS of A only
    assert glance.loc["ck", "cpu_vs_trntk_median"] == pytest.approx(1.5 / 10.5)
    assert glance.loc["trntk", ["cpu_vs_trntk_min", "cpu_vs_trntk_max"]].tolist() == [1.0, 1.0]
    assert at_a_glance(long, ["trntk", "ck"], reference="pntk")["cpu_vs_pntk_median"].isna().all()
    text = leaderboard_markdown(leaderboard(long, ["trntk", "ck"]), ["A", "B"], ["tau"], glance=glance.reset_index())
    assert "| ck | 2 | 0.68 (0.60 to 0.75) | 0.57 (0.50 to 0.65) | 0.20 (0.20 to 0.20) | 0.14× (0.14× to 0.14×) |" in text
