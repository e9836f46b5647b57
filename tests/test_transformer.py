"""The modular-addition transformer (issue 15): kernels against brute force, the stages end to
end on a tiny config, and validation of the ``spectral.modadd_tf`` block."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ntkbench import kernels, models
from ntkbench.config import ConfigError, modadd_experiment_config, validate_config
from ntkbench.kernels.inputs import cast_input
from ntkbench.models.transformer import LAYER_GROUPS, layer_group, tf_tokens
from ntkbench.spectral.modadd_tf import grouped_class_averaged_kernels


def _tiny(layer_norm: bool, equals_token: bool = True):
    torch.manual_seed(0)
    p = 5
    model = models.build({"name": "modadd_transformer", "p": p, "d_model": 8, "d_mlp": 12, "heads": 2,
                          "layer_norm": layer_norm, "equals_token": equals_token}).double()
    pairs = torch.tensor([[a, b] for a in range(p) for b in range(p)])[::3]
    return model, tf_tokens(pairs, p, equals_token)


def test_integer_tokens_keep_their_dtype():
    x = torch.tensor([[1, 2, 5]])
    assert cast_input(x, torch.device("cpu"), torch.float64).dtype == torch.int64


@pytest.mark.parametrize("impl", ["auto", "generic"])
@pytest.mark.parametrize("layer_norm,equals_token", [(False, True), (True, False)])
def test_transformer_kernels_match_brute_force(impl, layer_norm, equals_token):
    model, x = _tiny(layer_norm, equals_token)
    jac = kernels.jacobian(model, x, dtype=torch.float64, layerwise=True)
    parts = kernels.compute(model, x, kind="trntk0", layerwise=True, dtype=torch.float64, impl=impl)
    assert sorted(parts) == sorted(jac)
    for name, k in parts.items():
        ref = torch.einsum("ncp,mcp->nm", jac[name], jac[name])
        torch.testing.assert_close(k, ref, rtol=1e-9, atol=1e-10)
    # every parameter group maps to one of the four layer groups, all of which occur
    assert {layer_group(n) for n in parts} == set(LAYER_GROUPS)
    # grouped class-averaged kernels: per layer group and total = trntk0 / C from the full Jacobian
    grouped = grouped_class_averaged_kernels(model, x, layer_group)
    full = torch.cat([jac[n] for n in jac], dim=2)
    C = full.shape[1]
    np.testing.assert_allclose(grouped["total"], (torch.einsum("ncp,mcp->nm", full, full) / C).numpy(),
                               rtol=1e-9, atol=1e-10)
    for group in LAYER_GROUPS:
        g = torch.cat([jac[n] for n in jac if layer_group(n) == group], dim=2)
        np.testing.assert_allclose(grouped[group], (torch.einsum("ncp,mcp->nm", g, g) / C).numpy(),
                                   rtol=1e-9, atol=1e-10)


def test_transformer_entk_blocks_match_brute_force():
    model, x = _tiny(True)
    jac = kernels.jacobian(model, x, dtype=torch.float64)
    k = kernels.compute(model, x, kind="entk", dtype=torch.float64)
    torch.testing.assert_close(k, torch.einsum("ncp,mdp->nmcd", jac, jac), rtol=1e-9, atol=1e-10)


def test_full_entk_operator_accepts_tokens():
    from ntkbench.spectral import flatten_entk
    from ntkbench.spectral.modadd import full_entk_top

    model, x = _tiny(False)
    dense = flatten_entk(kernels.compute(model, x, kind="entk", dtype=torch.float64)).numpy()
    top = full_entk_top(model, x, 4, dtype=torch.float64)
    np.testing.assert_allclose(top.values, np.linalg.eigvalsh(dense)[::-1][:4], rtol=1e-6)


def _block(**exp):
    return {"experiments": {"tiny-tf": {"p": 5, **exp}}, "d_model": 8, "d_mlp": 16, "heads": 2, "epochs": 6,
            "checkpoint_every": 3, "top_k": 25, "full_top_k": 5, "batch_size": 16,
            "allow_divergence": True}  # 6 epochs do not beat chance at p = 5: keep the run


def test_modadd_tf_config_validation():
    cfg = validate_config({"spectral": {"modadd_tf": {}}})["spectral"]["modadd_tf"]
    exp = modadd_experiment_config(cfg, "modadd-tf-p29")
    assert (exp["p"], exp["d_model"], exp["d_mlp"], exp["heads"], exp["train_fraction"], exp["batch_size"],
            exp["weight_decay"]) == (29, 64, 256, 4, 0.5, 64, 1.0)
    for bad, needle in (({"p": 9}, "experiments.tiny-tf.p: 9 is not a prime"),
                        ({"heads": 3}, "experiments.tiny-tf.heads"),
                        ({"p": 4}, "modadd_tf.experiments.tiny-tf.p")):
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            validate_config({"spectral": {"modadd_tf": _block(**bad)}})
    with pytest.raises(ConfigError, match="also used by"):
        validate_config({"spectral": {"modadd_tf": _block(), "modadd": {"experiments": {"tiny-tf": {}}}}})
    with pytest.raises(ConfigError, match="unknown key"):
        validate_config({"spectral": {"modadd_tf": {**_block(), "width": 3}}})


def test_modadd_tf_stages_end_to_end(tmp_path):
    from ntkbench.stages.spectral_tf import tf_full_stage, tf_report_stage, tf_spectra_stage, tf_train_stage

    block = validate_config({"spectral": {"modadd_tf": _block()}})["spectral"]["modadd_tf"]
    cfg = modadd_experiment_config(block, "tiny-tf")
    tf_train_stage(cfg, "cpu", tmp_path / "ckpt.pt", tmp_path / "curve.csv")
    tf_spectra_stage(tmp_path / "ckpt.pt", cfg, "cpu", tmp_path / "spectra.npz")
    tf_full_stage(tmp_path / "ckpt.pt", cfg, "cpu", tmp_path / "full.npz")
    names = ["training_curve", "spectra", "cliffs", "overlap", "alignment", "full_spectrum"]
    outputs = {n: tmp_path / f"{n}.csv" for n in names}
    figures = ("spectra_figure", "grokking_figure", "heatmap_figure", "full_figure")
    outputs.update({f: tmp_path / f"{f}.png" for f in figures})
    tf_report_stage(tmp_path / "curve.csv", tmp_path / "spectra.npz", tmp_path / "full.npz", cfg, outputs)
    spectra = pd.read_csv(outputs["spectra"])
    assert set(spectra["layer"]) == {"total", *LAYER_GROUPS}
    assert set(spectra["epoch"]) == {0, 3, 6}
    overlap = pd.read_csv(outputs["overlap"])
    assert set(overlap["modes"]) == {4, 8, 16}
    assert overlap["overlap_sum"].between(0, 1 + 1e-9).all()
    assert {"test_acc", "train_acc"} <= set(overlap.columns)
    assert list(pd.read_csv(outputs["cliffs"]).columns[:5]) == ["epoch", "layer", "cliff", "start", "end"]
    alignment = pd.read_csv(outputs["alignment"])
    assert set(alignment["rotation"]) <= {"ab", "sum_diff"} and len(alignment) > 0
    assert alignment[["best_before", "best_after"]].stack().between(0, 1 + 1e-9).all()
    full = pd.read_csv(outputs["full_spectrum"])
    assert len(full) == 5 and (np.diff(full["eigenvalue"]) <= 1e-9).all()
    for f in figures:
        assert outputs[f].stat().st_size > 0
