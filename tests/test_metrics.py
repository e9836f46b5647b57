"""Faithfulness metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from ntkbench import metrics
from ntkbench.metrics import (
    FAITHFULNESS_KEYS,
    accuracy,
    faithfulness,
    kendall_tau,
    kendall_tau_true_class,
    linear_realisation,
    mean_sem,
    misclassification_coincidence,
    pearson,
    precision_recall,
    predicted_labels,
    spearman,
    test_accuracy_differential,
    true_class_log_prob,
    true_class_logit,
)


def binary_logits_from_log_probs(log_p_class1: np.ndarray) -> np.ndarray:
    """Binary (M, 1) logits whose class-1 log-probability is the given value."""
    p = np.exp(log_p_class1)
    return special.logit(p)[:, None]


# ------------------------------------------------------------------ true-class quantities


def test_true_class_log_prob_binary_and_multiclass_by_hand():
    binary = np.array([[0.0], [2.0], [2.0]])
    y_binary = np.array([1, 1, 0])
    expected = np.log([0.5, 1 / (1 + math.exp(-2)), 1 - 1 / (1 + math.exp(-2))])
    np.testing.assert_allclose(true_class_log_prob(binary, y_binary), expected, rtol=1e-12)

    multi = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y_multi = np.array([0, 2])
    denominator = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    np.testing.assert_allclose(
        true_class_log_prob(multi, y_multi), [1.0 - denominator, math.log(1 / 3)], rtol=1e-12
    )


def test_true_class_log_prob_is_float64_and_finite_when_saturated():
    logits32 = np.array([[40.0], [-40.0]], dtype=np.float32)
    out = true_class_log_prob(logits32, np.array([1, 1]))
    assert out.dtype == np.float64
    # log σ(40) ≈ −e^{−40}: not 0.0 (which log(float(σ)) gives), and log σ(−40) ≈ −40.
    assert out[0] < 0 and out[0] == pytest.approx(-math.exp(-40), rel=1e-9)
    assert out[1] == pytest.approx(-40.0, rel=1e-12)


def test_true_class_logit_binary_sign_and_multiclass_one_vs_rest():
    np.testing.assert_allclose(true_class_logit([[3.0], [3.0]], [1, 0]), [3.0, -3.0])
    z = np.array([[1.0, 2.0, 3.0]])
    p = special.softmax(z, axis=1)[0, 2]
    assert true_class_logit(z, [2])[0] == pytest.approx(math.log(p / (1 - p)), rel=1e-12)
    # Saturated: p rounds to 1.0 in float64, yet the logit is finite and exact.
    assert true_class_logit([[100.0, 0.0]], [0])[0] == pytest.approx(100.0)


def test_predicted_labels_and_accuracy():
    assert predicted_labels([[0.5], [-0.5], [0.0]]).tolist() == [1, 0, 0]
    assert predicted_labels([[0.1, 0.9, 0.3], [2.0, 1.0, 0.0]]).tolist() == [1, 0]
    assert accuracy([[0.5], [-0.5], [0.2], [-1.0]], [1, 1, 1, 0]) == pytest.approx(0.75)
    # 1-D logits are binary logits.
    assert predicted_labels(np.array([1.0, -1.0])).tolist() == [1, 0]


@pytest.mark.parametrize(
    "logits, y, message",
    [
        (np.zeros((3, 2, 1)), [0, 0, 0], "shape"),
        (np.zeros((3, 2)), [0, 1], "3 rows"),
        (np.zeros((3, 2)), [0, 1, 2], r"0\.\.1"),
        (np.zeros((2, 1)), [0, 2], r"0\.\.1"),
        (np.array([[np.nan], [0.0]]), [0, 1], "NaN"),
        (np.zeros((2, 1)), [0.5, 1.0], "integer"),
    ],
)
def test_invalid_inputs_name_the_problem(logits, y, message):
    with pytest.raises(ValueError, match=message):
        true_class_log_prob(logits, y)


def test_paired_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="same shape"):
        kendall_tau(np.zeros((4, 1)), np.zeros((4, 2)), [0, 1, 0, 1])


# ------------------------------------------------------------------ correlations


def test_kendall_tau_identical_ranks_is_one_and_reversed_is_minus_one():
    log_p = np.log(np.array([0.6, 0.7, 0.8, 0.9]))
    nn = binary_logits_from_log_probs(log_p)
    y = np.ones(4, dtype=int)
    # A different but monotone surrogate (same ranks) → τ = 1.
    same_order = binary_logits_from_log_probs(np.log([0.51, 0.52, 0.99, 0.999]))
    assert kendall_tau(nn, same_order, y) == pytest.approx(1.0)
    assert kendall_tau_true_class(nn, same_order, y) == pytest.approx(1.0)
    reversed_order = binary_logits_from_log_probs(np.log([0.9, 0.8, 0.7, 0.6]))
    assert kendall_tau(nn, reversed_order, y) == pytest.approx(-1.0)
    assert kendall_tau_true_class(nn, reversed_order, y) == pytest.approx(-1.0)


def test_kendall_tau_one_swap_in_four_by_hand():
    # Ranks 1 2 3 4 vs 1 3 2 4: of the 6 pairs only (2,3) is discordant → (5 − 1)/6 = 2/3.
    y = np.array([0, 1, 2, 0])
    nn = np.zeros((4, 3))
    kglm = np.zeros((4, 3))
    nn[np.arange(4), y] = [1.0, 2.0, 3.0, 4.0]
    kglm[np.arange(4), y] = [1.0, 3.0, 2.0, 4.0]
    assert kendall_tau(nn, kglm, y) == pytest.approx(2.0 / 3.0)
    # Multi-class: the reference τ is the true-class one.
    assert kendall_tau_true_class(nn, kglm, y) == pytest.approx(2.0 / 3.0)


def test_kendall_tau_on_log_probs_breaks_ties_of_saturated_float32_probabilities():
    # Confident network: float32 sigmoid rounds all four to exactly 1.0 ...
    nn = np.array([[20.0], [25.0], [30.0], [35.0]], dtype=np.float32)
    kglm = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.ones(4, dtype=int)
    p32 = (1.0 / (1.0 + np.exp(-nn))).astype(np.float32)[:, 0]
    assert np.all(p32 == np.float32(1.0))
    from scipy.stats import kendalltau

    assert math.isnan(kendalltau(p32, kglm[:, 0]).statistic)  # all tied → undefined
    # ... while float64 log-probabilities keep the order: perfect agreement.
    assert kendall_tau_true_class(nn, kglm, y) == pytest.approx(1.0)
    # The reference τ drops saturated points: none left, undefined.
    assert math.isnan(kendall_tau(nn, kglm, y))


def test_reference_and_true_class_tau_differ_by_hand():
    # Binary, C = 1. Network class-1 logits rank the points 0 < 1 < 2 < 3; the kGLM's class-1
    # logits rank them 1 < 0 < 3 < 2: pairs (0,1) and (2,3) discordant → τ = (4 − 2)/6 = 1/3.
    nn = np.array([[-5.0], [-3.0], [4.0], [6.0]], dtype=np.float32)
    kglm = np.array([[-1.0], [-2.0], [3.0], [1.5]])
    y = np.array([0, 0, 1, 1])
    assert kendall_tau(nn, kglm, y) == pytest.approx(1.0 / 3.0)
    # True class: network ±z = (5, 3, 4, 6), kGLM (1, 2, 3, 1.5): pairs (0,3), (1,2)
    # concordant, the other four discordant → τ = (2 − 4)/6 = −1/3.
    assert kendall_tau_true_class(nn, kglm, y) == pytest.approx(-1.0 / 3.0)
    report = faithfulness(nn, kglm, y)
    assert report["tau"] == pytest.approx(1.0 / 3.0)
    assert report["tau_true_class"] == pytest.approx(-1.0 / 3.0)
    assert report["tau_n_used"] == 4


def test_reference_tau_masks_float32_saturated_probabilities():
    from scipy.stats import kendalltau

    # float32 σ: −200 → exactly 0.0, 17.5 and 30 → exactly 1.0 (dropped); 16 → 0.99999988 (kept;
    # 1 − e^−16 is representable in float32 while 1 − e^−17.5 rounds to 1).
    nn = np.array([[-200.0], [-1.0], [0.5], [2.0], [16.0], [17.5], [30.0]], dtype=np.float32)
    kglm = np.array([[9.0], [1.0], [2.0], [3.0], [4.0], [-7.0], [-9.0]])
    y = np.array([0, 0, 1, 1, 1, 1, 1])
    p32 = metrics.special.expit(nn[:, 0])
    assert p32.dtype == np.float32 and p32[0] == 0.0 and p32[5] == 1.0 and p32[4] < 1.0
    nn_side, kglm_side = metrics.reference_tau_pair(nn, kglm, y)
    np.testing.assert_array_equal(kglm_side, kglm[1:5, 0])
    assert nn_side.dtype == np.float32
    # The four kept points agree perfectly; with the saturated ones, τ would be much lower.
    assert kendall_tau(nn, kglm, y) == pytest.approx(1.0)
    assert kendalltau(nn[:, 0], kglm[:, 0]).statistic < 0.0
    report = faithfulness(nn, kglm, y)
    assert report["tau_n_used"] == 4 and report["tau"] == pytest.approx(1.0)
    # True-class τ keeps every point (float64 log-sigmoid of ±z).
    assert kendall_tau_true_class(nn, kglm, y) == pytest.approx(
        kendalltau(np.where(y == 1, nn[:, 0], -nn[:, 0]), np.where(y == 1, kglm[:, 0], -kglm[:, 0])).statistic)


def test_reference_tau_keeps_float32_ties_like_the_reference():
    from scipy.stats import kendalltau

    # 16.0 and 16.05 round to the same float32 probability: a tie on the network side (τ-b).
    nn = np.array([[0.0], [1.0], [16.0], [16.05]], dtype=np.float32)
    kglm = np.array([[0.0], [1.0], [3.0], [2.0]])
    y = np.array([0, 1, 1, 1])
    p32 = metrics.special.expit(nn[:, 0])
    assert p32[2] == p32[3]
    assert kendall_tau(nn, kglm, y) == pytest.approx(kendalltau(p32, kglm[:, 0]).statistic)
    assert kendall_tau(nn, kglm, y) < 1.0


def test_pearson_and_spearman_by_hand():
    y = np.ones(3, dtype=int)
    nn = binary_logits_from_log_probs(np.array([-3.0, -2.0, -1.0]))
    kglm = binary_logits_from_log_probs(np.array([-1.0, -0.5, -0.1]))
    # Pearson of (−3,−2,−1) and (−1,−0.5,−0.1): centred (−1,0,1)·(−0.467,0.033,0.433)
    b = np.array([-1.0, -0.5, -0.1]) - np.mean([-1.0, -0.5, -0.1])
    expected_r = (-1 * b[0] + 1 * b[2]) / (math.sqrt(2) * np.linalg.norm(b))
    assert pearson(nn, kglm, y) == pytest.approx(expected_r, rel=1e-9)
    assert spearman(nn, kglm, y) == pytest.approx(1.0)
    assert spearman(nn, kglm[::-1], y) == pytest.approx(-1.0)
    # Probability space is a different (monotone) transform: same Spearman, other Pearson.
    assert spearman(nn, kglm, y, space="proba") == pytest.approx(1.0)
    assert pearson(nn, kglm, y, space="proba") != pytest.approx(expected_r, rel=1e-6)


# ------------------------------------------------------------------ decisions


def test_test_accuracy_differential_by_hand():
    y = np.array([0, 1, 2, 1, 0])
    nn = np.eye(3)[[0, 1, 2, 0, 0]]  # 4/5 correct
    kglm = np.eye(3)[[0, 1, 1, 0, 2]]  # 2/5 correct
    assert test_accuracy_differential(nn, kglm, y) == pytest.approx((0.4 - 0.8) * 100)


def test_misclassification_coincidence_on_hand_made_confusion():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    nn_pred = np.array([1, 2, 0, 1, 0, 2, 1, 2])
    kglm_pred = np.array([1, 1, 2, 1, 0, 2, 2, 0])
    # Wrong: NN at {0,1,4,6}, kGLM at {0,1,2,4,7}; union = {0,1,2,4,6,7} (6 points).
    # Both wrong at {0,1,4}; same prediction there at {0 (1=1), 4 (0=0)}, not 1 (2≠1).
    nn, kglm = np.eye(3)[nn_pred] * 5, np.eye(3)[kglm_pred] * 5
    assert misclassification_coincidence(nn, kglm, y) == pytest.approx(2 / 6)
    # Identical predictions → every error coincides.
    assert misclassification_coincidence(nn, nn, y) == pytest.approx(1.0)


def test_misclassification_coincidence_binary_and_no_errors():
    y = np.array([1, 0, 1, 0])
    nn = np.array([[1.0], [1.0], [-1.0], [-1.0]])  # wrong at 1, 2
    kglm = np.array([[1.0], [1.0], [1.0], [1.0]])  # wrong at 1, 3
    assert misclassification_coincidence(nn, kglm, y) == pytest.approx(1 / 3)
    perfect = np.array([[1.0], [-1.0], [1.0], [-1.0]])
    assert math.isnan(misclassification_coincidence(perfect, perfect, y))


# ------------------------------------------------------------------ linear realisation


def test_linear_realisation_recovers_exact_logit_affine_map():
    rng = np.random.default_rng(3)
    kglm = rng.normal(0, 2, size=(400, 1))
    y = rng.integers(0, 2, size=400)
    nn = 1.7 * kglm - 0.4  # NN logit an exact linear function of the kGLM logit
    result = linear_realisation(kglm, nn, y, seed=0)
    # Paper mode pairs class 1: p = σ(1.7 x − 0.4) is exactly the logistic Φ², so R² = 1.
    assert result["r2_logistic"] == pytest.approx(1.0, abs=1e-6)
    nu, mu, alpha, beta = result["params_logistic"]
    assert (nu, mu) == (pytest.approx(1.0, abs=1e-6), pytest.approx(0.0, abs=1e-6))
    assert (alpha, beta) == (pytest.approx(0.4 / 1.7, rel=1e-4), pytest.approx(1 / 1.7, rel=1e-4))
    # arctan's heavy tails reach p ≈ 1 far more slowly: a poorer fit in logit space.
    assert 0.0 < result["r2_arctan"] < result["r2_logistic"]
    assert result["r2_linear"] < result["r2_logistic"]
    assert result["n_fit"] + result["n_eval"] + result["n_masked"] == 400
    assert abs(result["n_fit"] - result["n_eval"]) <= 10


def test_linear_realisation_true_class_mode_binary():
    rng = np.random.default_rng(4)
    kglm = rng.normal(0, 2, size=(300, 1))
    y = rng.integers(0, 2, size=300)
    # Without an offset the true-class map is the same for both labels: exact again.
    exact = linear_realisation(kglm, 1.7 * kglm, y, outputs="true_class")
    assert exact["r2_logistic"] == pytest.approx(1.0, abs=1e-6)
    # With an offset the signed true-class pairs follow two different curves: R² < 1.
    shifted = linear_realisation(kglm, 1.7 * kglm - 2.0, y, outputs="true_class")
    assert shifted["r2_logistic"] < 0.99


def test_linear_realisation_multiclass_pairs_every_class_in_paper_mode():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    kglm = np.column_stack([x, -x])  # two softmax outputs, kGLM logits ±x
    nn = 1.5 * kglm  # NN class-c logit-of-probability is then 3 x_c for both classes
    y = rng.integers(0, 2, size=300)
    paper = linear_realisation(kglm, nn, y, seed=1)
    assert paper["n_fit"] + paper["n_eval"] + paper["n_masked"] == 300 * 2
    assert paper["r2_logistic"] == pytest.approx(1.0, abs=1e-6)
    noisy = linear_realisation(kglm, nn + rng.normal(scale=0.5, size=nn.shape), y, seed=1)
    assert 0.5 < noisy["r2_logistic"] < 0.999
    true_class = linear_realisation(kglm, nn, y, seed=1, outputs="true_class")
    assert true_class["n_fit"] + true_class["n_eval"] + true_class["n_masked"] == 300
    assert true_class["r2_logistic"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="outputs"):
        linear_realisation(kglm, nn, y, outputs="all")


def test_linear_realisation_masks_saturated_network_probabilities():
    kglm = np.linspace(-3, 3, 40)[:, None]
    nn = kglm.copy()
    nn[:10] = 30.0  # p within 1e-7 of 1 (true class 1)
    y = np.ones(40, dtype=int)
    result = linear_realisation(kglm, nn, y)
    assert result["n_masked"] == 10
    assert result["n_fit"] + result["n_eval"] == 30


def test_linear_realisation_seed_changes_split_reproducibly():
    rng = np.random.default_rng(5)
    kglm = rng.normal(size=(200, 1))
    nn = np.tanh(kglm) * 3 + rng.normal(scale=0.3, size=(200, 1))
    y = rng.integers(0, 2, size=200)
    first = linear_realisation(kglm, nn, y, seed=7)
    again = linear_realisation(kglm, nn, y, seed=7)
    other = linear_realisation(kglm, nn, y, seed=8)
    assert first["r2_logistic"] == again["r2_logistic"]
    assert first["r2_logistic"] != other["r2_logistic"]


def test_linear_realisation_too_few_points_gives_nan():
    result = linear_realisation([[0.1], [0.2], [0.3]], [[0.1], [0.2], [0.3]], [1, 0, 1])
    assert math.isnan(result["r2_logistic"]) and math.isnan(result["r2_linear"])


# ------------------------------------------------------------------ forensics / aggregation


def test_precision_recall_by_hand_counts():
    flags = np.array([1, 1, 1, 0, 0, 1, 0], dtype=bool)
    truth = np.array([1, 0, 1, 1, 0, 1, 1], dtype=bool)
    # TP = 3 (0, 2, 5), FP = 1 (1), FN = 2 (3, 6).
    precision, recall = precision_recall(flags, truth)
    assert precision == pytest.approx(3 / 4)
    assert recall == pytest.approx(3 / 5)


def test_precision_recall_zero_division_is_nan():
    precision, recall = precision_recall(np.zeros(3, bool), np.array([1, 0, 0], bool))
    assert math.isnan(precision) and recall == 0.0
    precision, recall = precision_recall(np.array([1, 0, 0], bool), np.zeros(3, bool))
    assert precision == 0.0 and math.isnan(recall)
    with pytest.raises(ValueError, match="equal length"):
        precision_recall(np.zeros(3, bool), np.zeros(4, bool))


def test_mean_sem_against_hand_values():
    mean, sem = mean_sem([1.0, 2.0, 3.0, 4.0])
    # sample std = sqrt(5/3); sem = sqrt(5/3)/2
    assert mean == pytest.approx(2.5)
    assert sem == pytest.approx(math.sqrt(5 / 3) / 2)
    mean, sem = mean_sem([2.0, np.nan, 4.0])
    assert mean == pytest.approx(3.0) and sem == pytest.approx(1.0)
    mean, sem = mean_sem([7.0])
    assert mean == 7.0 and math.isnan(sem)
    assert all(math.isnan(v) for v in mean_sem([]))
    assert all(math.isnan(v) for v in mean_sem([np.nan, np.nan]))


def test_faithfulness_report_keys_and_values():
    y = np.array([0, 1, 2, 1, 0, 2])
    nn = np.array([[3, 1, 0], [0, 2, 1], [0, 1, 3], [2, 1, 0], [4, 0, 1], [0, 0, 5.0]])
    kglm = nn * 0.5 + np.array([[0.0, 0.0, 0.1]])
    report = faithfulness(nn, kglm, y, seed=0)
    assert tuple(report) == FAITHFULNESS_KEYS
    assert report["nn_test_acc"] == pytest.approx(5 / 6 * 100)
    assert report["kglm_test_acc"] == pytest.approx(5 / 6 * 100)
    assert report["tad"] == pytest.approx(0.0)
    assert report["r_miss"] == pytest.approx(1.0)
    assert report["tau"] == pytest.approx(kendall_tau(nn, kglm, y))
    assert report["tau_true_class"] == pytest.approx(report["tau"])  # multi-class: the same τ
    assert report["tau_n_used"] == 6 and isinstance(report["tau_n_used"], int)
    assert 0.5 < report["tau"] <= 1.0
    assert all(isinstance(v, float) for k, v in report.items() if k != "tau_n_used")


def test_module_exports_exist():
    for name in metrics.__all__:
        assert hasattr(metrics, name)
