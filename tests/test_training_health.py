"""Diverged or dead networks stop with TrainingFailed instead of feeding numbers downstream."""
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from ntkbench import models
from ntkbench.data import load_dataset
from ntkbench.training import TrainConfig, evaluate_logits, train_classifier
from ntkbench.training.health import (
    TrainingFailed,
    chance_threshold,
    check_training,
    loss_problems,
    output_problems,
    weight_problems,
)
from ntkbench.utils import seed_everything


@pytest.fixture(scope="module")
def digits2():
    torch.set_num_threads(1)
    return load_dataset({"name": "digits", "classes": [0, 1], "max_train": 120, "max_test": 40})


def _train(bundle, **cfg):
    seed_everything(0)
    model = models.build({"name": "mlp", "hidden": [32, 32], "input_shape": list(bundle.input_shape),
                          "num_outputs": bundle.num_outputs})
    history = train_classifier(model, bundle, TrainConfig(batch_size=16, **cfg), seed=0)
    return model, history, evaluate_logits(model, bundle.train.x)


def test_healthy_binary_and_multiclass_runs_pass(digits2):
    model, history, logits = _train(digits2, lr=1.0, epochs=10)
    assert check_training(model, history, logits, digits2.train.y, digits2.num_classes) == []
    ten = load_dataset({"name": "digits", "max_train": 150, "max_test": 30})
    model, history, logits = _train(ten, lr=1.0, epochs=10)
    assert check_training(model, history, logits, ten.train.y, ten.num_classes) == []


def test_dead_network_at_chance_with_constant_outputs_fails(digits2):
    # SGD at lr 1e3: weights ~1e19, every sample gets the same logit, accuracy = majority class.
    model, history, logits = _train(digits2, lr=1e3, epochs=10)
    with pytest.raises(TrainingFailed) as err:
        check_training(model, history, logits, digits2.train.y, digits2.num_classes, what="training tiny seed 0")
    text = str(err.value)
    assert text.startswith("training tiny seed 0 failed")
    assert "at chance" in text and "constant" in text and "blew up" in text
    assert "allow_divergence" in text


def test_blown_up_weights_and_outputs_fail_even_at_full_accuracy(digits2):
    # Adam at lr 1e6 still separates the training set, but with weights ~1e7 and logits ~1e27.
    model, history, logits = _train(digits2, lr=1e6, epochs=5, optimizer="adam")
    problems = check_training(model, history, logits, digits2.train.y, allow_failure=True)
    assert any("parameter" in p and "blew up" in p for p in problems)
    assert any("outputs blew up" in p for p in problems)


def test_non_finite_loss_reaches_the_health_check(digits2):
    # train_classifier returns a NaN run instead of raising, so allow_divergence can keep it
    # and the default check names the loss curve.
    model, history, logits = _train(digits2, lr=1e30, epochs=2)
    assert not np.isfinite(history["train_loss"].to_numpy()).all()
    with pytest.raises(TrainingFailed, match="train_loss is non-finite"):
        check_training(model, history, logits, digits2.train.y, digits2.num_classes)
    problems = check_training(model, history, logits, digits2.train.y, digits2.num_classes, allow_failure=True)
    assert any("non-finite" in p for p in problems)


def test_allow_failure_logs_and_returns(caplog):
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with caplog.at_level(logging.WARNING, logger="ntkbench.training.health"):
        problems = check_training(model, allow_failure=True)
    assert problems == ["parameter 'weight' has 2 non-finite value(s)"]
    assert "failure allowed" in caplog.text
    with pytest.raises(TrainingFailed, match="'weight' has 2 non-finite"):
        check_training(model)


def test_loss_curve_checks():
    ok = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.3, 0.1]})
    assert loss_problems(ok) == []
    nan = ok.assign(train_loss=[0.7, float("nan"), 0.1])
    assert loss_problems(nan) == ["the train_loss is non-finite (NaN/inf) in 1 of 3 records, first at epoch 2"]
    up = ok.assign(train_loss=[0.7, 3.0, 8.0])
    assert "blew up" in loss_problems(up)[0]
    tms = pd.DataFrame({"step": [1, 500], "loss": [0.1, float("inf")]})
    assert "first at step 500" in loss_problems(tms, "loss")[0]
    with pytest.raises(KeyError, match="train_loss"):
        loss_problems(tms)


def test_chance_threshold_and_output_checks():
    y = np.array([0, 1] * 50)
    assert chance_threshold(y) == (0.5, pytest.approx(0.525))
    assert chance_threshold(np.repeat(np.arange(10), 10))[1] == pytest.approx(0.145)
    # Imbalanced: always predicting the majority class (70%) is at chance.
    y = np.array([0] * 70 + [1] * 30)
    z = np.where(np.arange(100) < 50, -1.0, -2.0)[:, None]  # varied logits, all class 0
    assert any("at chance" in p for p in output_problems(z, y))
    good = np.where(y == 1, 2.0, -2.0)[:, None] + np.linspace(0, 0.1, 100)[:, None]
    assert output_problems(good, y) == []
    assert "single class" in output_problems(good, np.zeros(100))[0]
    assert "non-finite" in output_problems(np.array([[0.0], [np.inf]]))[0]


def test_toy_tasks_use_the_same_check():
    from ntkbench.data.modadd import make_modadd_data
    from ntkbench.data.tms import importance_weights, make_tms_data
    from ntkbench.training.modadd import train_modadd
    from ntkbench.training.tms import train_tms

    x = make_tms_data(5, 0.5, 40, seed=0)
    seed_everything(0)
    tms = models.build({"name": "tms", "n_features": 5, "n_hidden": 2})
    curve = train_tms(tms, x, importance_weights(5, 0.8).float(), lr=1e-2, steps=50)
    assert check_training(tms, curve, loss_column="loss") == []
    with torch.no_grad():
        next(tms.parameters()).mul_(1e9)
    with pytest.raises(TrainingFailed, match="blew up"):
        check_training(tms, curve, loss_column="loss", what="TMS m=2")

    data = make_modadd_data(5, 0.7)
    seed_everything(0)
    mod = models.build({"name": "modmlp", "p": 5, "width": 32})
    curve, _ = train_modadd(mod, data, epochs=200, checkpoint_every=100)
    with torch.no_grad():
        logits = mod(data.x[data.train_idx])
    assert check_training(mod, curve, logits, data.y[data.train_idx], data.p) == []


def test_weight_problems_name_buffers_and_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        net[1].running_var.fill_(float("inf"))
        net[0].weight[0, 0] = 1e9
    problems = weight_problems(net)
    assert "parameter '0.weight' blew up: max |w| = 1e+09 > 1e+06" in problems
    assert "buffer '1.running_var' has 3 non-finite value(s)" in problems
