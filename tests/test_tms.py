"""TMS data, model, training and the flattened-eNTK stage (small sizes)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ntkbench import kernels, models
from ntkbench.data.tms import importance_weights, make_tms_data
from ntkbench.spectral import flatten_entk
from ntkbench.spectral.tms import n_represented, tms_spectrum
from ntkbench.training.tms import train_tms


def test_tms_data_is_seeded_sparse_and_normalised():
    x = make_tms_data(20, 0.9, 300, seed=3)
    assert x.shape == (300, 20) and x.dtype == torch.float32
    torch.testing.assert_close(x, make_tms_data(20, 0.9, 300, seed=3))
    assert not torch.equal(x, make_tms_data(20, 0.9, 300, seed=4))
    norms = x.norm(dim=1)
    nonzero = norms > 0
    torch.testing.assert_close(norms[nonzero], torch.ones(int(nonzero.sum())), atol=1e-4, rtol=0)  # +1e-8 in the norm
    assert 0.85 < float((x == 0).float().mean()) < 0.95
    with pytest.raises(ValueError):
        make_tms_data(5, 1.0)
    np.testing.assert_allclose(importance_weights(4, 0.8).numpy(), [1, 0.8, 0.64, 0.512])


def test_tms_model_registered_and_shapes():
    model = models.build({"name": "tms", "n_features": 7, "n_hidden": 3})
    assert [n for n, _ in model.named_parameters()] == ["W", "b"]
    assert torch.all(model.b == 0)
    out = model(torch.rand(4, 7))
    assert out.shape == (4, 7) and torch.all(out >= 0)


def test_train_tms_reduces_loss():
    x = make_tms_data(8, 0.5, 64, seed=0)
    torch.manual_seed(0)
    model = models.build({"name": "tms", "n_features": 8, "n_hidden": 3})
    curve = train_tms(model, x, importance_weights(8, 0.8).float(), lr=1e-2, steps=150, log_every=50)
    assert isinstance(curve, pd.DataFrame) and list(curve.columns) == ["step", "loss"]
    assert curve["loss"].iloc[-1] < 0.5 * curve["loss"].iloc[0]
    assert 0 <= n_represented(model) <= 8


def test_tms_spectrum_matches_dense_flattened_entk_with_importance():
    x = make_tms_data(6, 0.3, 10, seed=1)
    torch.manual_seed(1)
    model = models.build({"name": "tms", "n_features": 6, "n_hidden": 2})
    beta = 0.3
    sp = tms_spectrum(model, x, beta, importance=0.8, top_k=12)
    # dense reference: eNTK from the engine's Jacobian, g^c scaled by I_c^(β/2), flattened class-major
    jac = kernels.jacobian(model, x, dtype=torch.float64)
    scale = (0.8 ** torch.arange(6, dtype=torch.float64)) ** (beta / 2)
    jac = jac * scale.view(1, -1, 1)
    dense = flatten_entk(torch.einsum("ncp,mdp->nmcd", jac, jac)).numpy()
    w, v = np.linalg.eigh(dense)
    np.testing.assert_allclose(sp.eig.values, w[::-1][:12], rtol=1e-8, atol=1e-12)
    top = v[:, ::-1][:, :12]
    np.testing.assert_allclose(np.abs(np.sum(top * sp.eig.vectors, axis=0)), 1.0, atol=1e-6)
    assert sp.heatmap.shape == (6, 12)
    assert 0 <= sp.scores["alignment"] <= 1 and 0 <= sp.scores["mean_best_cos"] <= 1


def test_tms_stages_end_to_end(tmp_path):
    from ntkbench.config import validate_config
    from ntkbench.stages.spectral import tms_report_stage, tms_spectrum_stage, tms_train_stage

    cfg = {"n_features": 6, "num_points": 30, "lr": 1e-2, "steps": 100, "betas": [0, 0.3], "top_k": 15,
           "cliffs": {"min_ratio": 1.1}}
    cfg = validate_config({"spectral": {"tms": cfg}})["spectral"]["tms"]  # the schema's defaults
    paths = []
    for m, s in [(2, 0.3), (3, 0.8)]:
        d = tmp_path / f"m{m}"
        tms_train_stage({"m": m, "sparsity": s}, cfg, "cpu", d / "model.pt", d / "loss.csv")
        tms_spectrum_stage(d / "model.pt", cfg, "cpu", d / "spectrum.npz")
        paths.append(d / "spectrum.npz")
    table = tms_report_stage(paths, cfg, tmp_path / "tms.csv", tmp_path / "s.png", tmp_path / "h.png")
    csv = pd.read_csv(tmp_path / "tms.csv", keep_default_na=False)
    assert list(csv.columns[:7]) == ["m", "sparsity", "beta", "n_represented", "cliffs", "alignment", "mean_best_cos"]
    assert len(csv) == len(table) == 4
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "h.png").stat().st_size > 0


def test_tms_spectra_sweep_equals_engine_importance_per_beta():
    from ntkbench.spectral.tms import tms_spectra

    x = make_tms_data(5, 0.3, 8, seed=2)
    torch.manual_seed(2)
    model = models.build({"name": "tms", "n_features": 5, "n_hidden": 2})
    sweep = tms_spectra(model, x, [0, 0.3, 1], importance=0.8, top_k=10)
    for beta, sp in zip([0, 0.3, 1], sweep):
        ref = tms_spectrum(model, x, beta, importance=0.8, top_k=10)  # engine applies the importance
        np.testing.assert_allclose(sp.eig.values, ref.eig.values, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(sp.heatmap, ref.heatmap, atol=1e-7)
