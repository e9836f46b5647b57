"""Seed aggregation, the uncertainty formatter and the paper-style Markdown tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ntkbench.tables import aggregate_seeds, format_with_uncertainty, render_markdown_table

REQUIRED_COLUMNS = ["experiment", "kernel", "n_seeds", "nn_test_acc", "kglm_test_acc", "tad",
                    "tad_sem", "tau", "tau_sem", "r_miss", "r_miss_sem"]
METRICS = ["nn_test_acc", "kglm_test_acc", "tad", "tau", "r_miss", "pearson"]


@pytest.fixture
def per_seed() -> pd.DataFrame:
    rows = []
    # mnist2-mlp / trntk: three seeds; ck: two seeds, one R_miss undefined (NaN).
    for seed, (acc, kacc, tau, rmiss) in enumerate([(99.0, 99.5, 0.70, 0.5),
                                                     (98.0, 98.0, 0.72, 0.7),
                                                     (97.0, 96.0, 0.71, 0.6)]):
        rows.append(dict(experiment="mnist2-mlp", kernel="trntk", seed=seed, nn_test_acc=acc,
                         kglm_test_acc=kacc, tad=kacc - acc, tau=tau, r_miss=rmiss, pearson=0.9))
    for seed, (tau, rmiss) in enumerate([(0.40, np.nan), (0.50, 0.25)]):
        rows.append(dict(experiment="mnist2-mlp", kernel="ck", seed=seed, nn_test_acc=99.0,
                         kglm_test_acc=99.0, tad=0.0, tau=tau, r_miss=rmiss, pearson=0.8))
    rows.append(dict(experiment="cifar10-resnet", kernel="trntk", seed=0, nn_test_acc=93.07,
                     kglm_test_acc=92.79, tad=-0.28, tau=0.776, r_miss=0.75, pearson=0.95))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ aggregation


def test_aggregate_seeds_columns_and_hand_values(per_seed):
    summary = aggregate_seeds(per_seed, by=["experiment", "kernel"], metrics=METRICS)
    assert list(summary.columns[: len(REQUIRED_COLUMNS)]) == REQUIRED_COLUMNS
    assert {"nn_test_acc_sem", "kglm_test_acc_sem", "pearson", "pearson_sem"} <= set(summary.columns)
    assert list(zip(summary.experiment, summary.kernel)) == [
        ("mnist2-mlp", "trntk"), ("mnist2-mlp", "ck"), ("cifar10-resnet", "trntk")]
    assert summary.n_seeds.tolist() == [3, 2, 1]

    trntk = summary.iloc[0]
    assert trntk.tau == pytest.approx(0.71)
    assert trntk.tau_sem == pytest.approx(0.01 / math.sqrt(3))  # std(0.70,0.72,0.71)=0.01
    # TAD per seed: +0.5, 0, −1 → mean −1/6, sample std sqrt(((2/3)²+(1/6)²+(5/6)²)/2)
    assert trntk.tad == pytest.approx(-1 / 6)
    assert trntk.tad_sem == pytest.approx(math.sqrt(((2 / 3) ** 2 + (1 / 6) ** 2 + (5 / 6) ** 2) / 2)
                                          / math.sqrt(3))
    ck = summary.iloc[1]
    assert ck.r_miss == pytest.approx(0.25) and math.isnan(ck.r_miss_sem)  # one non-NaN value
    assert ck.tau_sem == pytest.approx(0.05)
    single = summary.iloc[2]
    assert single.tau == pytest.approx(0.776) and math.isnan(single.tau_sem)


def test_aggregate_seeds_defaults_to_numeric_columns_and_reports_missing(per_seed):
    summary = aggregate_seeds(per_seed)
    assert "seed" not in summary.columns and "seed_sem" not in summary.columns
    assert list(summary.columns[: len(REQUIRED_COLUMNS)]) == REQUIRED_COLUMNS
    with pytest.raises(KeyError, match="not_a_metric"):
        aggregate_seeds(per_seed, metrics=["tau", "not_a_metric"])
    with pytest.raises(KeyError, match="model"):
        aggregate_seeds(per_seed, by=["model"])


# ------------------------------------------------------------------ formatter


@pytest.mark.parametrize(
    "mean, sem, kwargs, expected",
    [
        (0.7083, 0.0031, {}, "0.708(3)"),
        (99.641, 0.012, {}, "99.64(1)"),
        (98.4, 0.1, {}, "98.4(1)"),
        (0.03, 0.05, {"signed": True}, "+0.03(5)"),
        (-2.14, 0.5, {"signed": True}, "-2.1(5)"),
        (0.8091, 0.0096, {}, "0.81(1)"),  # error 0.0096 rounds up to 0.01
        (93.2, 2.3, {}, "93(2)"),
        (1234.0, 23.0, {}, "1230(20)"),
        (0.776, math.nan, {}, "0.776"),
        (0.776, 0.0, {}, "0.776"),
        (0.10000000000000002, 1.7e-17, {}, "0.100"),  # identical values averaged: no error
        (-0.28, None, {"signed": True, "decimals": 2}, "-0.28"),
        (0.45, math.nan, {"signed": True, "decimals": 2}, "+0.45"),
        (math.nan, 0.1, {}, "—"),
        (-0.0004, 0.005, {"signed": True}, "+0.000(5)"),  # no invented minus sign
        (-0.0001, None, {"decimals": 2}, "0.00"),
    ],
)
def test_format_with_uncertainty(mean, sem, kwargs, expected):
    assert format_with_uncertainty(mean, sem, **kwargs) == expected


# ------------------------------------------------------------------ markdown


def test_render_markdown_table_layout(per_seed):
    summary = aggregate_seeds(per_seed, metrics=METRICS)
    text = render_markdown_table(summary)
    lines = text.splitlines()

    table1_header = ("| Model (Dataset) | # Models | NN test acc (%) | TAD (%) | τ_K | τ_K true class "
                     "| kGLM |")
    assert table1_header in lines
    # NN acc (99, 98, 97): mean 98, sem 1/sqrt(3) = 0.577 → "98.0(6)". No tau_true_class or
    # solver columns in this summary: dashes.
    assert "| mnist2-mlp | 3 | 98.0(6) | -0.2(4) | 0.710(6) | — | — |" in lines
    assert "| cifar10-resnet | 1 | 93.07 | -0.28 | 0.776 | — | — |" in lines

    assert "| Experiment | Metric | trNTK | CK |" in lines
    assert "| mnist2-mlp | τ_K | 0.710(6) | 0.45(5) |" in lines
    assert "|  | R_Miss | 0.60(6) | 0.25 |" in lines
    # cifar10-resnet has no CK row: a dash, not a crash.
    assert "| cifar10-resnet | τ_K | 0.776 | — |" in lines
    assert "|  | TAD (%) | -0.28 | — |" in lines


@pytest.fixture
def per_seed_with_solvers(per_seed) -> pd.DataFrame:
    df = per_seed.copy()
    df["tau_true_class"] = df["tau"] - 0.2
    df["tau_n_used"] = 100
    df["solver"] = "sgd"
    df["alpha"] = 1e-4
    df["target"] = "labels"
    exact = df[df.experiment == "mnist2-mlp"].assign(solver="lbfgs", tau=0.6, tau_true_class=0.1)
    student = df[(df.experiment == "cifar10-resnet")].assign(target="predictions", alpha=1e-2, tau=0.9)
    return pd.concat([df, exact, student], ignore_index=True)


def test_aggregate_seeds_carries_solver_alpha_and_target(per_seed_with_solvers):
    df = per_seed_with_solvers
    summary = aggregate_seeds(df, by=["experiment", "kernel", "solver", "target"],
                              metrics=METRICS + ["tau_true_class", "tau_n_used"])
    assert list(summary.columns[:6]) == ["experiment", "kernel", "solver", "target", "n_seeds", "alpha"]
    assert list(summary.columns[6:16]) == ["nn_test_acc", "kglm_test_acc", "tad", "tad_sem", "tau",
                                           "tau_sem", "tau_true_class", "tau_true_class_sem",
                                           "r_miss", "r_miss_sem"]
    assert len(summary) == 6 and summary.alpha.tolist() == [1e-4] * 5 + [1e-2]
    # Settings that differ between seeds of one group are shown, not averaged.
    mixed = aggregate_seeds(df[df.experiment == "mnist2-mlp"], metrics=["tau"])
    assert mixed.solver.tolist() == ["sgd/lbfgs", "sgd/lbfgs"] and "alpha_sem" not in mixed.columns
    assert aggregate_seeds(df).columns.tolist()[:6] == ["experiment", "kernel", "n_seeds", "solver",
                                                        "alpha", "target"]


def test_render_markdown_table_names_solver_and_shows_both_taus(per_seed_with_solvers):
    summary = aggregate_seeds(per_seed_with_solvers, by=["experiment", "kernel", "solver", "target"],
                              metrics=METRICS + ["tau_true_class"])
    lines = render_markdown_table(summary).splitlines()
    assert "| mnist2-mlp | 3 | 98.0(6) | -0.2(4) | 0.710(6) | 0.510(6) | sgd α=1e-4 |" in lines
    assert "| mnist2-mlp | 3 | 98.0(6) | -0.2(4) | 0.600 | 0.100 | lbfgs α=1e-4 |" in lines
    # Table 5: the kGLM fitted to the network's predictions, same layout.
    table5 = lines.index("### Table 5: κ = trNTK surrogates fitted to the network's predictions")
    assert lines[table5 + 4] == "| cifar10-resnet | 1 | 93.07 | -0.28 | 0.900 | 0.576 | sgd α=1e-2 |"
    assert "| cifar10-resnet | 1 | 93.07 | -0.28 | 0.776 | 0.576 | sgd α=1e-4 |" in lines[:table5]
    # Table 2: one block per solver of mnist2-mlp, and one per target of cifar10-resnet.
    assert "| mnist2-mlp (solver sgd) | τ_K | 0.710(6) | 0.45(5) |" in lines
    assert "|  | τ_K true class | 0.510(6) | 0.25(5) |" in lines
    assert "|  | kGLM | sgd α=1e-4 | sgd α=1e-4 |" in lines
    assert "| mnist2-mlp (solver lbfgs) | τ_K | 0.600 | 0.600 |" in lines
    assert "| cifar10-resnet (alpha 1e-2, target predictions) | τ_K | 0.900 | — |" in lines


def test_render_markdown_table_without_table1_kernel(per_seed):
    summary = aggregate_seeds(per_seed[per_seed.kernel == "ck"], metrics=METRICS)
    text = render_markdown_table(summary)
    assert "Table 1" not in text and "Table 2" in text
    with pytest.raises(KeyError, match="tau"):
        render_markdown_table(summary.drop(columns=["tau"]))
