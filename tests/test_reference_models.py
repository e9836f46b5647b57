"""The reference code's MNIST2 networks and training recipe (SPEC section 2)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntkbench import kernels, models
from ntkbench.training import TrainConfig, train_classifier
from ntkbench.training.classifier import classification_loss

F64 = torch.float64


def _build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build({"name": name, "input_shape": [1, 28, 28], "num_outputs": 1})


def _reference_mlp_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference script's Model.forward, written out with the module's parameters."""
    l1, l2, l3, l4 = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    y = x.reshape(x.shape[0], -1)
    y = F.relu(l1(y) / np.sqrt(100))
    y = F.relu(l2(y) / np.sqrt(100))
    y = F.relu(l3(y) / 10)
    return l4(y)


def _reference_cnn_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    conv1, conv3, conv5 = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    fc1, fc2, fc3 = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    width = 8
    y = F.relu(conv1(x)) / np.sqrt(8 * width * 3 * 3)
    y = F.relu(F.avg_pool2d(y, 2))
    y = F.relu(conv3(y)) / np.sqrt(4 * width * 3 * 3)
    y = F.relu(F.avg_pool2d(y, 2))
    y = F.relu(conv5(y)) / np.sqrt(width * 3 * 3)
    y = F.relu(F.avg_pool2d(y, 2))
    y = y.view(y.shape[0], -1)
    y = F.relu(fc1(y)) / np.sqrt(128)
    y = F.relu(fc2(y)) / np.sqrt(64)
    return fc3(y)


@pytest.mark.parametrize("name, forward, n_params", [
    ("mnist2-ref-mlp", _reference_mlp_forward, 784 * 100 + 100 + 2 * (100 * 100 + 100) + 101),
    ("mnist2-ref-cnn", _reference_cnn_forward,
     (9 * 64 + 64) + (64 * 9 * 32 + 32) + (32 * 9 * 8 + 8) + (72 * 128 + 128) + (128 * 64 + 64) + 65),
])
def test_reference_models_match_the_reference_forward(name, forward, n_params):
    model = _build(name)
    assert sum(p.numel() for p in model.parameters()) == n_params
    x = torch.rand(5, 1, 28, 28)
    out = model(x)
    assert out.shape == (5, 1)
    torch.testing.assert_close(out, forward(model, x), rtol=1e-5, atol=1e-5)
    # Weights and biases N(0, 1), not PyTorch's default uniform initialisation.
    params = torch.cat([p.detach().ravel() for p in model.parameters()])
    assert abs(float(params.mean())) < 0.05 and abs(float(params.std()) - 1.0) < 0.05
    biases = torch.cat([m.bias.detach() for m in model.modules() if hasattr(m, "bias") and m.bias is not None])
    assert float(biases.abs().max()) > 1.0  # uniform(±1/sqrt(fan_in)) never gets there


def test_reference_models_need_one_output():
    for name in ("mnist2-ref-mlp", "mnist2-ref-cnn"):
        with pytest.raises(ValueError, match="one output"):
            models.build({"name": name, "input_shape": [1, 28, 28], "num_outputs": 3})
    with pytest.raises(ValueError, match="too small"):
        models.build({"name": "mnist2-ref-cnn", "input_shape": [1, 4, 4], "num_outputs": 1})


@pytest.mark.parametrize("name", ["mnist2-ref-mlp", "mnist2-ref-cnn"])
def test_reference_models_work_with_the_kernel_engine(name):
    model = _build(name, seed=1)
    torch.manual_seed(2)
    x, y = torch.rand(5, 1, 28, 28), torch.rand(3, 1, 28, 28)
    for kind in ("trntk", "trntk0"):
        fast = kernels.compute(model, x, y, kind, dtype=F64)
        generic = kernels.compute(model, x, y, kind, dtype=F64, impl="generic")
        torch.testing.assert_close(fast, generic, rtol=1e-9, atol=1e-10)
    self_kernel = kernels.compute(model, x, kind="trntk")
    torch.testing.assert_close(self_kernel.diagonal(), torch.ones(5))


# ------------------------------------------------------------------ training loss


def test_mse_sigmoid_loss_by_hand():
    logits = torch.tensor([[0.0], [2.0], [-1.0]])
    y = torch.tensor([1, 1, 0])
    expected = ((0.5 - 1) ** 2 + (1 / (1 + math.exp(-2)) - 1) ** 2 + (1 / (1 + math.exp(1))) ** 2) / 3
    assert float(classification_loss(logits, y, "mse_sigmoid")) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="one output logit"):
        classification_loss(torch.zeros(3, 4), torch.tensor([0, 1, 2]), "mse_sigmoid")
    with pytest.raises(ValueError, match="train.loss"):
        TrainConfig(loss="hinge")


def test_train_loss_default_is_the_schema_default():
    from ntkbench.config import load_schema

    schema = load_schema()
    train = schema["$defs"]["experiment"]["properties"]["train"]["properties"]
    assert train["loss"]["default"] == TrainConfig().loss
    assert train["loss"]["enum"] == ["cross_entropy", "mse_sigmoid"]


def test_training_with_mse_sigmoid_learns_the_binary_task():
    from ntkbench.data import load_dataset

    data = load_dataset({"name": "digits", "classes": [0, 1], "test_fraction": 0.3, "split_seed": 0})
    torch.manual_seed(0)
    model = models.build({"name": "mlp", "input_shape": list(data.input_shape), "num_outputs": 1})
    history = train_classifier(model, data, TrainConfig(lr=1.0, epochs=3, batch_size=16, loss="mse_sigmoid"),
                               seed=0, log_every=1)
    assert history.iloc[-1].test_acc > 0.95
    # The logged loss is the configured one: an MSE of probabilities (0.25 at σ = 1/2), falling.
    assert history.train_loss.iloc[-1] < min(0.25, history.train_loss.iloc[0])
