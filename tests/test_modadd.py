"""Modular-addition data, model, training, per-checkpoint spectra and the report stage (small p)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ntkbench import kernels, models
from ntkbench.data.modadd import make_modadd_data
from ntkbench.spectral import flatten_entk
from ntkbench.spectral.modadd import class_averaged_kernels, expected_cliffs, full_entk_top
from ntkbench.training.modadd import train_modadd


def test_modadd_data_layout_and_split():
    d = make_modadd_data(7, 0.7, split_seed=1)
    assert d.x.shape == (49, 14) and d.y.shape == (49,)
    a, b = 3, 5
    i = a * 7 + b
    assert tuple(d.pairs[i]) == (3, 5) and int(d.y[i]) == 1
    assert d.x[i, 3] == 1 and d.x[i, 7 + 5] == 1 and d.x[i].sum() == 2
    assert len(d.train_idx) == int(49 * 0.7) and len(np.intersect1d(d.train_idx, d.test_idx)) == 0
    np.testing.assert_array_equal(d.train_idx, make_modadd_data(7, 0.7, split_seed=1).train_idx)
    assert d.targets.shape == (49, 7)


def test_modmlp_structure_and_scaling():
    torch.manual_seed(0)
    model = models.build({"name": "modmlp", "p": 5, "width": 16})
    assert [n for n, _ in model.named_parameters()] == ["layer1.weight", "layer2.weight"]
    x = make_modadd_data(5).x
    w1, w2 = model.layer1.weight, model.layer2.weight
    expected = ((x @ w1.T / math.sqrt(10)) ** 2) @ w2.T / 16
    torch.testing.assert_close(model(x), expected)


def test_class_averaged_kernel_is_trntk0_over_c_from_entk():
    torch.manual_seed(0)
    model = models.build({"name": "modmlp", "p": 5, "width": 8})
    x = make_modadd_data(5).x
    kers = class_averaged_kernels(model, x)
    jac = kernels.jacobian(model, x, dtype=torch.float64, layerwise=True)
    total = 0
    for name, j in jac.items():
        ref = torch.einsum("ncp,mcp->nm", j, j).numpy() / 5
        np.testing.assert_allclose(kers[name], ref, rtol=1e-10, atol=1e-14)
        total = total + ref
    np.testing.assert_allclose(kers["total"], total, rtol=1e-10, atol=1e-14)


def test_full_entk_top_matches_dense():
    torch.manual_seed(0)
    model = models.build({"name": "modmlp", "p": 5, "width": 8})
    x = make_modadd_data(5).x
    jac = kernels.jacobian(model, x, dtype=torch.float64)
    dense = flatten_entk(torch.einsum("ncp,mdp->nmcd", jac, jac)).numpy()
    assert dense.shape == (125, 125)
    res = full_entk_top(model, x, 6, dtype=torch.float64, tol=1e-12)
    np.testing.assert_allclose(res.values, np.linalg.eigvalsh(dense)[::-1][:6], rtol=1e-8)


@pytest.mark.parametrize("p", [5, 29, 31])
def test_expected_cliffs_follow_from_p(p):
    blocks = expected_cliffs(p)
    assert blocks["cliff1"] == (1, 1 + 2 * (p - 1)) and blocks["cliff2"] == (1 + 2 * (p - 1), 1 + 4 * (p - 1))


def test_train_modadd_curve_and_checkpoints():
    d = make_modadd_data(5, 0.7)
    torch.manual_seed(0)
    model = models.build({"name": "modmlp", "p": 5, "width": 32})
    curve, states = train_modadd(model, d, epochs=25, checkpoint_every=10)
    assert list(curve.columns) == ["epoch", "train_acc", "test_acc", "train_loss", "test_loss"]
    assert curve["epoch"].tolist() == list(range(26))
    assert sorted(states) == [0, 10, 20, 25]
    assert curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]


def test_modadd_stages_end_to_end(tmp_path):
    from ntkbench.config import modadd_experiment_config, validate_config
    from ntkbench.stages.spectral import (
        modadd_full_stage,
        modadd_report_stage,
        modadd_spectra_stage,
        modadd_train_stage,
    )

    block = {"experiments": {"tiny": {"p": 5, "epochs": 20}}, "width": 32, "seeds": [0], "top_k": 25,
             "full_top_k": 6}
    block = validate_config({"spectral": {"modadd": block}})["spectral"]["modadd"]  # the schema's defaults
    cfg = modadd_experiment_config(block, "tiny")
    assert cfg["p"] == 5 and cfg["epochs"] == 20
    d = tmp_path / "seed0"
    modadd_train_stage(cfg, 0, "cpu", d / "ckpt.pt", d / "curve.csv")
    modadd_spectra_stage(d / "ckpt.pt", cfg, "cpu", d / "spectra.npz")
    modadd_full_stage(d / "ckpt.pt", cfg, "cpu", d / "full.npz")
    names = ["training_curve", "spectra", "cliffs", "overlap", "full_spectrum"]
    outputs = {n: tmp_path / f"{n}.csv" for n in names}
    outputs.update({f: tmp_path / f"{f}.png" for f in ("spectra_figure", "grokking_figure", "heatmap_figure",
                                                         "full_figure")})
    modadd_report_stage([0], [d / "curve.csv"], [d / "spectra.npz"], [d / "full.npz"], cfg, outputs)
    spectra = pd.read_csv(outputs["spectra"])
    assert list(spectra.columns[:4]) == ["epoch", "layer", "index", "eigenvalue"]
    assert set(spectra["layer"]) == {"total", "layer1", "layer2"}
    assert set(spectra["epoch"]) == {0, 10, 20}
    cliffs = pd.read_csv(outputs["cliffs"])
    assert list(cliffs.columns[:5]) == ["epoch", "layer", "cliff", "start", "end"]
    curve = pd.read_csv(outputs["training_curve"])
    assert list(curve.columns[:5]) == ["epoch", "train_acc", "test_acc", "train_loss", "test_loss"]
    overlap = pd.read_csv(outputs["overlap"])
    assert set(overlap["block"]) == {"cliff1", "cliff2"}
    assert overlap["overlap_sum"].between(0, 1).all()
    for f in ("spectra_figure", "grokking_figure", "heatmap_figure", "full_figure"):
        assert outputs[f].stat().st_size > 0
