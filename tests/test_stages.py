"""The workflow's stage functions in-process: train -> kernel -> kGLM -> summary on tiny data."""
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ntkbench import kernels, models, store
from ntkbench.data import load_dataset, save_bundle
from ntkbench.stages import (collect_faithfulness, kernel_options_for, kernel_stage, kglm_stage,
                             summary_stage, train_stage)

OPTIONS = {"proj_dim": 64, "proj_type": "gaussian", "proj_seed": 0, "batch_size": 32,
           "block_size": 24, "em_layers": None, "dtype": "float32"}


def test_kernel_options_depend_only_on_what_a_kind_uses():
    assert kernel_options_for("trntk", OPTIONS) == {"batch_size": 32, "dtype": "float32"}
    assert kernel_options_for("proj-pntk", OPTIONS) == {
        "batch_size": 32, "dtype": "float32", "proj_dim": 64, "proj_type": "gaussian", "proj_seed": 0}
    assert kernel_options_for("em", OPTIONS)["em_layers"] is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    torch.set_num_threads(1)
    bundle = load_dataset({"name": "digits", "classes": [0, 1, 2], "max_train": 60, "max_test": 30})
    save_bundle(bundle, root / "data.npz")
    train_stage(root / "data.npz", {"name": "mlp", "hidden": [16, 16]},
                {"optimizer": "sgd", "lr": 1.0, "epochs": 20, "batch_size": 16}, seed=0, device="cpu",
                out_model=root / "model.pt", out_logits=root / "logits.npz", out_history=root / "hist.csv")
    return root, bundle


def test_train_stage_outputs(trained):
    root, bundle = trained
    logits = np.load(root / "logits.npz")
    model, ckpt = models.load_checkpoint(root / "model.pt")
    assert ckpt["spec"]["num_outputs"] == 3 and ckpt["seed"] == 0
    with torch.no_grad():
        np.testing.assert_allclose(logits["test_logits"], model(bundle.test.x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits["test_y"], bundle.test.y.numpy())
    history = pd.read_csv(root / "hist.csv")
    assert history["train_acc"].iloc[-1] > 0.9


@pytest.mark.parametrize("kind", ["trntk", "proj-pntk"])
def test_kernel_stage_matches_in_memory_kernel(trained, kind):
    root, bundle = trained
    out = root / f"{kind}.h5"
    kernel_stage(root / "data.npz", root / "model.pt", kind, OPTIONS, "cpu", out)
    assert not out.with_name(out.name + ".partial").exists()
    model, _ = models.load_checkpoint(root / "model.pt")
    extra = {"proj_dim": 64, "seed": 0} if kind.startswith("proj") else {}
    expected = kernels.compute(model, bundle.test.x, bundle.train.x, kind=kind, **extra).numpy()
    record = store.read_kernel(out, "test_train")
    np.testing.assert_allclose(record.kernel, expected, rtol=1e-4, atol=1e-5)
    with h5py.File(out, "r") as fh:
        assert set(fh) == {"train_train", "test_train"}
        np.testing.assert_allclose(np.diag(fh["train_train"]["kernel"][...]), 1.0, rtol=1e-5)


def test_kglm_stage_and_summary(trained):
    root, bundle = trained
    kernel_stage(root / "data.npz", root / "model.pt", "trntk", OPTIONS, "cpu", root / "k.h5")
    report = kglm_stage(root / "data.npz", root / "logits.npz", root / "k.h5", {"alpha": 1e-4, "seed": 0},
                        root / "kglm.json", root / "kglm.npz")
    assert json.loads((root / "kglm.json").read_text())["test"]["tau"] == pytest.approx(report["test"]["tau"])
    scores = report["test"]
    assert -1 <= scores["tau"] <= 1 and scores["tau"] > 0.1
    # Attributions (eq. 3) sum to the kGLM logits.
    assert scores["attribution_max_abs_error"] < 1e-6
    nn_acc = (np.load(root / "logits.npz")["test_logits"].argmax(1) == bundle.test.y.numpy()).mean()
    assert scores["nn_test_acc"] == pytest.approx(100 * nn_acc)
    assert scores["tad"] == pytest.approx(scores["kglm_test_acc"] - scores["nn_test_acc"])
    kglm_logits = np.load(root / "kglm.npz")["test_logits"]
    assert kglm_logits.shape == (len(bundle.test), 3)
    # Predictions as targets (appendix I) fit a different surrogate.
    other = kglm_stage(root / "data.npz", root / "logits.npz", root / "k.h5",
                       {"alpha": 1e-4, "seed": 0, "target": "predictions"}, root / "p.json", root / "p.npz")
    assert other["target"] == "predictions"

    records = [("toy", 0, "trntk", root / "kglm.json"), ("toy", 1, "trntk", root / "kglm.json")]
    summary = summary_stage(records, root / "s.csv", root / "ps.csv", root / "s.md", root / "s.png")
    row = summary.iloc[0]
    assert row["n_seeds"] == 2 and row["tau"] == pytest.approx(scores["tau"])
    assert row["tau_sem"] == pytest.approx(0.0, abs=1e-12)
    assert (root / "s.png").stat().st_size > 5000
    with pytest.raises(KeyError, match="poisoned_test"):
        collect_faithfulness(records, split="poisoned_test")
