"""Digits bundles, the model zoo, checkpoints and the seeded training loop."""
import numpy as np
import pytest
import torch

from ntkbench import models
from ntkbench.data import DataBundle, Split, load_bundle, load_dataset, save_bundle
from ntkbench.models.classifiers import Scale
from ntkbench.training import TrainConfig, train_classifier


def test_digits_binary_bundle():
    b = load_dataset({"name": "digits", "classes": [0, 1], "test_fraction": 0.3, "split_seed": 0})
    assert b.num_classes == 2 and b.num_outputs == 1
    assert b.input_shape == (1, 8, 8)
    assert len(b.train) + len(b.test) == 360  # 178 zeros + 182 ones in sklearn's digits
    assert set(b.train.y.tolist()) == {0, 1}
    assert 0.0 <= float(b.train.x.min()) and float(b.train.x.max()) <= 1.0
    # Stratified: class balance in the test set follows the data (within one sample).
    assert abs(int((b.test.y == 0).sum()) - round(0.3 * 178)) <= 1


def test_digits_split_is_fixed_and_classes_reindexed():
    a = load_dataset({"name": "digits", "classes": [3, 8]})
    b = load_dataset({"name": "digits", "classes": [3, 8]})
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert set(a.train.y.tolist()) == {0, 1}
    c = load_dataset({"name": "digits"})
    assert c.num_classes == 10 and c.num_outputs == 10


@pytest.mark.parametrize("spec, err", [
    ({"name": "digits", "classes": [1]}, "at least two"),
    ({"name": "digits", "test_fraction": 1.5}, "test_fraction"),
    ({"name": "imagenet"}, "data.name"),
])
def test_bad_data_spec(spec, err):
    with pytest.raises(ValueError, match=err):
        load_dataset(spec)


def test_bundle_roundtrip_with_extra_splits(tmp_path):
    x = torch.rand(5, 1, 2, 2)
    bundle = DataBundle(Split(x, torch.tensor([0, 1, 0, 1, 1])), Split(x[:2], torch.tensor([1, 0])), 2,
                        meta={"name": "toy"}, extra={"idx": np.array([1, 3])},
                        extra_splits={"poisoned_test": Split(x[:3], torch.tensor([0, 0, 0]))})
    save_bundle(bundle, tmp_path / "b.npz")
    back = load_bundle(tmp_path / "b.npz")
    assert torch.equal(back.train.x, x) and back.meta == {"name": "toy"}
    assert list(back.eval_splits) == ["test", "poisoned_test"]
    assert torch.equal(back.extra_splits["poisoned_test"].y, torch.zeros(3, dtype=torch.int64))
    np.testing.assert_array_equal(back.extra["idx"], [1, 3])
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_bundle(tmp_path / "missing.npz")


def test_ntk_mlp_parameterisation():
    torch.manual_seed(0)
    net = models.build({"name": "mlp", "input_shape": [1, 8, 8], "num_outputs": 1, "hidden": [100, 100]})
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    scales = [m for m in net.modules() if isinstance(m, Scale)]
    assert [l.in_features for l in linears] == [64, 100, 100]
    assert [s.factor for s in scales] == pytest.approx([64 ** -0.5, 0.1, 0.1])
    # N(0, 1) weights: sample std close to 1 (10k draws).
    assert float(linears[1].weight.detach().std()) == pytest.approx(1.0, abs=0.05)
    x = torch.rand(3, 1, 8, 8)
    manual = x.flatten(1)
    for i, (lin, s) in enumerate(zip(linears, scales)):
        manual = (manual @ lin.weight.T + lin.bias) * s.factor
        if i < 2:
            manual = manual.relu()
    torch.testing.assert_close(net(x), manual)


def test_cnn_shapes_and_unknown_model():
    net = models.build({"name": "cnn", "input_shape": [1, 8, 8], "num_outputs": 10})
    assert net(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    with pytest.raises(ValueError, match="model.name"):
        models.build({"name": "nope"})
    with pytest.raises(ValueError, match="bad arguments"):
        models.build({"name": "mlp", "input_shape": [4], "num_outputs": 1, "depth": 3})


def test_checkpoint_roundtrip(tmp_path):
    spec = {"name": "cnn", "input_shape": [1, 8, 8], "num_outputs": 1}
    net = models.build(spec)
    models.save_checkpoint(tmp_path / "m.pt", net, spec, seed=3)
    back, ckpt = models.load_checkpoint(tmp_path / "m.pt")
    assert ckpt["seed"] == 3 and not back.training
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(back(x), net.eval()(x))


def test_training_is_seeded_and_learns():
    bundle = load_dataset({"name": "digits", "classes": [0, 1]})
    spec = {"name": "mlp", "input_shape": [1, 8, 8], "num_outputs": 1, "hidden": [32, 32]}
    cfg = TrainConfig(optimizer="sgd", lr=2.0, epochs=8, batch_size=16)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        net = models.build(spec)
        hist = train_classifier(net, bundle, cfg, seed=1)
        runs.append((net, hist))
    torch.testing.assert_close(runs[0][0][1][0].weight, runs[1][0][1][0].weight, rtol=0, atol=0)
    assert runs[0][1]["test_acc"].iloc[-1] > 0.95  # 0 vs 1 digits is easy
    with pytest.raises(ValueError, match="train.optimizer"):
        TrainConfig(optimizer="lbfgs")


def test_mlp_dropout_and_logistic_regression_shapes():
    """dattri's MNIST models from the zoo's mlp: hidden=[] is one Linear (7850 parameters);
    784-128-64-10 with dropout 0.1 has dattri's 109,386 parameters and Dropout after each
    hidden ReLU; dropout 0 adds no module (parameter names unchanged)."""
    from torch import nn

    from ntkbench import models

    lr = models.build({"name": "mlp", "input_shape": [1, 28, 28], "num_outputs": 10, "hidden": [],
                       "parameterisation": "standard"})
    assert sum(p.numel() for p in lr.parameters()) == 7850
    net = models.build({"name": "mlp", "input_shape": [1, 28, 28], "num_outputs": 10, "hidden": [128, 64],
                        "parameterisation": "standard", "dropout": 0.1})
    assert sum(p.numel() for p in net.parameters()) == 109386
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    plain = models.build({"name": "mlp", "input_shape": [4], "num_outputs": 2, "hidden": [3]})
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    x = torch.randn(5, 1, 28, 28)
    net.eval()
    assert torch.equal(net(x), net(x))  # eval: dropout off
    with pytest.raises(ValueError, match="dropout"):
        models.build({"name": "mlp", "input_shape": [4], "num_outputs": 2, "dropout": 1.0})
