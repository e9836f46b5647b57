"""The surrogate analysis (attributions, exemplars, linear realisation): identities of the
library functions, the stage on tiny trained networks, what it refuses, and its config."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import special

from ntkbench import store
from ntkbench.analysis import (attribution_by_class, check_attribution_sums, realisation_pairs, select_test_points,
                               top_k_exemplars)
from ntkbench.config import ConfigError, analysis_experiments, experiment_analysis, load_config, validate_config
from ntkbench.data import DataBundle, Split, load_dataset, save_bundle
from ntkbench.kinds import options_for
from ntkbench.metrics import linear_realisation
from ntkbench.stages.analysis import OUTPUT_KEYS, AnalysisJob, analysis_stage
from ntkbench.stages.common import InputError
from ntkbench.stages.kernels import kernel_stage
from ntkbench.stages.surrogates import kglm_stage
from ntkbench.stages.train import train_stage
from ntkbench.surrogate import KernelGLM

OPTIONS = {"proj_dim": 64, "proj_type": "gaussian", "proj_seed": 0, "batch_size": 32, "block_size": 32,
           "em_layers": None, "dtype": "float32"}
KGLM = {"alpha": 1e-3, "seed": 0, "target": "labels", "class_weight": "balanced", "solver": "lbfgs"}
TRAIN = {"optimizer": "sgd", "lr": 1.0, "epochs": 20, "batch_size": 16, "allow_divergence": False}
SETTINGS = {"test_points": 2, "selection_seed": 0, "top_k": 3}


# ----------------------------------------------------------------------------- library identities
def test_attribution_sums_equal_the_kglm_logits():
    rng = np.random.default_rng(0)
    for c_out in (1, 4):  # a binary kGLM has one logit
        coef, intercept = rng.normal(size=(c_out, 30)), rng.normal(size=c_out)
        K = rng.uniform(-1, 1, size=(5, 30))
        glm = KernelGLM.from_weights(coef, intercept)
        attr = glm.attribution(K)
        assert attr.shape == (5, 30, c_out)
        logits = K @ coef.T + intercept  # brute force: W κ + b
        np.testing.assert_allclose(attr.sum(axis=1), logits, rtol=1e-12, atol=1e-12)
        assert check_attribution_sums(attr, logits) < 1e-12
        with pytest.raises(ValueError, match="eq. 3 does not hold"):
            check_attribution_sums(attr, logits + 1e-6)
        # Per training class: the class sums add up to the logit, the means are those of the members.
        y = rng.integers(0, 3, size=30)
        table = attribution_by_class(attr[0], y, num_classes=3)
        assert len(table) == c_out * 3
        np.testing.assert_allclose(table.groupby("logit")["sum"].sum().to_numpy(), logits[0], rtol=1e-12)
        row = table[(table.logit == c_out - 1) & (table.train_class == 2)].iloc[0]
        members = attr[0, y == 2, c_out - 1]
        assert row["n"] == members.size and row["mean"] == pytest.approx(members.mean(), rel=1e-12)
        assert row["q25"] == pytest.approx(np.quantile(members, 0.25)) and row["max"] == members.max()


def test_exemplars_equal_a_brute_force_sort():
    rng = np.random.default_rng(1)
    K = np.round(rng.uniform(0, 1, size=(6, 40)), 1)  # many ties: the lower index must win
    idx, values = top_k_exemplars(K, 5)
    for m in range(6):
        expected = sorted(range(40), key=lambda i: (-K[m, i], i))[:5]
        assert idx[m].tolist() == expected
        np.testing.assert_array_equal(values[m], K[m, expected])
    assert top_k_exemplars(K[:, :3], 5)[0].shape == (6, 3)


def test_test_points_are_reproducible_and_checked():
    a = select_test_points(100, 4, seed=3)
    assert a.tolist() == sorted(a.tolist()) and len(set(a.tolist())) == 4
    np.testing.assert_array_equal(a, select_test_points(100, 4, seed=3))
    assert not np.array_equal(a, select_test_points(100, 4, seed=4))
    assert select_test_points(3, 10, seed=0).tolist() == [0, 1, 2]
    assert select_test_points(100, [7, 2], seed=0).tolist() == [7, 2]
    with pytest.raises(ValueError, match=r"\[100\] not in the test split's rows 0..99"):
        select_test_points(100, [5, 100], seed=0)


@pytest.mark.parametrize("phi", ["linear", "logistic", "arctan"])
def test_r2_of_an_exact_phi_relation_is_one(phi):
    rng = np.random.default_rng(2)
    x = rng.uniform(-3, 3, size=400)  # kGLM logits
    prob = {"linear": 0.1 * x + 0.5,
            "logistic": special.expit((x - 0.3) / 0.7),
            "arctan": 1 / np.pi * np.arctan(-(x - 0.3) / (2 * -0.4)) + 0.5}[phi]
    nn_logits = special.logit(prob)[:, None]
    y = (prob > 0.5).astype(int)
    result = linear_realisation(x[:, None], nn_logits, y, seed=0)
    assert result[f"r2_{phi}"] == pytest.approx(1.0, abs=1e-6)
    pairs, r2 = realisation_pairs(x[:, None], nn_logits, y, seed=0)
    assert r2[phi] == pytest.approx(result[f"r2_{phi}"], abs=0)  # the same fit, the same number
    assert len(pairs) == result["n_eval"] == 200 and (pairs[f"r2_{phi}"] == r2[phi]).all()
    np.testing.assert_allclose(pairs[f"phi_{phi}"], pairs.nn_prob, atol=1e-5)  # on the diagonal
    np.testing.assert_allclose(pairs.kglm_logit, x[pairs.test_row])
    np.testing.assert_allclose(pairs.nn_prob, prob[pairs.test_row], rtol=1e-12)


def test_token_inputs_are_written_as_text_cells(tmp_path):
    from ntkbench.plots.analysis import as_display_image, plot_exemplars

    assert as_display_image(np.zeros(64)) is None  # a token sequence of a square length is no image
    pixels, cmap = as_display_image(np.full((1, 8, 8), 3.0))
    assert pixels.shape == (8, 8) and cmap == "gray" and pixels.max() == 0.0  # constant: scaled to 0
    pixels, cmap = as_display_image(np.random.default_rng(0).normal(size=(3, 4, 4)))
    assert pixels.shape == (4, 4, 3) and cmap is None and pixels.min() == 0.0 and pixels.max() == 1.0
    tokens = np.arange(10 * 12).reshape(10, 12)
    indices = {"trntk": np.array([[1, 2], [3, 4]])}
    plot_exemplars(tmp_path / "t.png", ["trntk"], [0, 5], tokens[[0, 5]], [0, 1], tokens, np.arange(10) % 2,
                   indices, {"trntk": np.array([[0.9, 0.8], [0.7, 0.6]])}, ["no", "yes"], title="tokens")
    assert (tmp_path / "t.png").stat().st_size > 5_000


# ----------------------------------------------------------------------------- the stage
def _pipeline(root, bundle, kinds, seed=0):
    """Train a tiny MLP on ``bundle``, compute ``kinds`` and fit their kGLMs (the DAG's inputs)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    save_bundle(bundle, root / "data.npz")
    train_stage(root / "data.npz", {"name": "mlp", "hidden": [16, 16]}, TRAIN, seed=seed, device="cpu",
                out_model=root / "model.pt", out_logits=root / "logits.npz", out_history=root / "hist.csv")
    for kind in kinds:
        kernel_stage(root / "data.npz", root / "model.pt", kind, options_for(kind, OPTIONS), OPTIONS["block_size"],
                     "cpu", root / f"{kind}.h5")
        kglm_stage(root / "data.npz", root / "logits.npz", root / "model.pt", root / f"{kind}.h5", kind,
                   options_for(kind, OPTIONS), KGLM, root / f"{kind}.json", root / f"{kind}.npz")
    return root


def _run(root, kinds, kernel_files=None, kglm_files=None, settings=SETTINGS, out=None, seed=0):
    out = out or root / "out"
    kernel_files = kernel_files or {k: root / f"{k}.h5" for k in kinds}
    kglm_files = kglm_files or {k: root / f"{k}.npz" for k in kinds}
    outputs = {key: out / f"{key}.{'png' if key in ('attribution', 'exemplars', 'realisation') else key.split('_')[-1]}"
               for key in OUTPUT_KEYS}
    result = analysis_stage(AnalysisJob("toy", root / "data.npz", root / "model.pt", root / "logits.npz", seed, kinds,
                                        kernel_files, {k: options_for(k, OPTIONS) for k in kinds}, kglm_files,
                                        {k: root / f"{k}.json" for k in kinds}, settings, outputs))
    return result, outputs


@pytest.fixture(scope="module")
def digits3(tmp_path_factory):
    bundle = load_dataset({"name": "digits", "classes": [3, 5, 8], "max_train": 60, "max_test": 30})
    return _pipeline(tmp_path_factory.mktemp("analysis3"), bundle, ["trntk", "trntk0"]), bundle


def _synthetic_28x28(n_train=48, n_test=20, seed=0):
    """A binary 1x28x28 image task (MNIST's shape): class 1 has a brighter upper half."""
    gen = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % 2
        x = 0.3 * torch.rand(n, 1, 28, 28, generator=gen)
        x[y == 1, :, :14, :] += 0.6
        return Split(x, y)

    return DataBundle(split(n_train), split(n_test), num_classes=2, meta={"name": "synthetic28", "classes": [0, 1]})


@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory):
    bundle = _synthetic_28x28()
    return _pipeline(tmp_path_factory.mktemp("analysis28"), bundle, ["trntk"]), bundle


def test_stage_writes_figures_and_tables_that_agree_with_the_fits(digits3):
    root, bundle = digits3
    result, outputs = _run(root, ["trntk", "trntk0"])
    for key in ("attribution", "exemplars", "realisation"):
        assert outputs[key].stat().st_size > 20_000, key
    rows = result["test_rows"]
    assert rows == select_test_points(len(bundle.test), 2, 0).tolist()
    # Attribution table: the class sums of each logit add up to the stored kGLM logit.
    table = pd.read_csv(outputs["attribution_csv"])
    assert set(table.kernel) == {"trntk", "trntk0"} and set(table.test_row) == set(rows)
    assert set(table.train_class.astype(str)) == {"3", "5", "8"}  # the original digit labels
    sums = table.groupby(["kernel", "test_row", "logit"]).agg(total=("sum", "sum"), logit_value=("kglm_logit", "first"))
    np.testing.assert_allclose(sums.total, sums.logit_value, rtol=1e-9, atol=1e-9)
    stored = np.load(root / "trntk.npz")["test_logits"]
    z = sums.loc[("trntk", rows[0])].logit_value.to_numpy()
    np.testing.assert_allclose(z, stored[rows[0]], rtol=1e-9)
    predicted = table[table.predicted_logit]
    assert (predicted.groupby(["kernel", "test_row"]).logit.nunique() == 1).all()
    assert (predicted.logit_name.astype(str) == predicted.kglm_prediction.astype(str)).all()
    # Exemplars: the top-3 of the stored kernel rows, by brute force.
    exemplars = pd.read_csv(outputs["exemplars_csv"])
    K = store.read_kernel(root / "trntk0.h5", "test_train").kernel
    for row in rows:
        got = exemplars[(exemplars.kernel == "trntk0") & (exemplars.test_row == row)].sort_values("rank")
        assert got.train_index.tolist() == sorted(range(K.shape[1]), key=lambda i: (-K[row, i], i))[:3]
    assert "| trNTK |" in outputs["exemplars_md"].read_text()
    # Realisation: the R² of the surrogate stage's report, every held-out pair of each kernel.
    realisation = pd.read_csv(outputs["realisation_csv"])
    report = pd.read_json(root / "trntk.json", typ="series")
    for phi in ("linear", "logistic", "arctan"):
        r2 = realisation[realisation.kernel == "trntk"][f"r2_{phi}"].unique()
        assert len(r2) == 1 and r2[0] == pytest.approx(report["test"][f"r2_{phi}"], nan_ok=True)
        assert result["r2"]["trntk"][phi] == pytest.approx(report["test"][f"r2_{phi}"], nan_ok=True)
    assert result["attribution_max_abs_error"] < 1e-9


def test_stage_on_a_binary_28x28_image_task(mnist_like):
    root, bundle = mnist_like
    result, outputs = _run(root, ["trntk"], settings={"test_points": [3, 0], "selection_seed": 0, "top_k": 5})
    assert result["test_rows"] == [3, 0]
    table = pd.read_csv(outputs["attribution_csv"])
    assert set(table.logit) == {0} and len(table) == 2 * 2  # one logit x two training classes x two points
    assert table.predicted_logit.all()
    sums = table.groupby("test_row").agg(total=("sum", "sum"), z=("kglm_logit", "first"))
    np.testing.assert_allclose(sums.total, sums.z, rtol=1e-9, atol=1e-9)
    assert (pd.read_csv(outputs["exemplars_csv"]).groupby("test_row").size() == 5).all()
    for key in ("attribution", "exemplars", "realisation"):
        assert outputs[key].stat().st_size > 20_000, key


def test_stage_refuses_a_kernel_of_another_kind(digits3):
    root, _ = digits3
    with pytest.raises(store.KernelCheckError, match=r"trntk0\.h5:test_train.*kind: file has 'trntk0', expected 'trntk'"):
        _run(root, ["trntk"], kernel_files={"trntk": root / "trntk0.h5"})


def test_stage_refuses_a_kernel_of_another_experiment(digits3, mnist_like):
    root, _ = digits3
    other, _ = mnist_like
    with pytest.raises(store.KernelCheckError, match=r"trntk\.h5:test_train is not the kernel this stage needs"
                                                     r".*data_fingerprint_x"):
        _run(root, ["trntk"], kernel_files={"trntk": other / "trntk.h5"})


def test_stage_refuses_a_kglm_of_another_kernel_and_bad_test_points(digits3):
    root, bundle = digits3
    with pytest.raises(InputError, match="do not reproduce its test logits"):
        _run(root, ["trntk"], kglm_files={"trntk": root / "trntk0.npz"})
    with pytest.raises(InputError, match=r"analysis.test_points of experiment 'toy'.*\[30\]"):
        _run(root, ["trntk"], settings={**SETTINGS, "test_points": [0, len(bundle.test)]})
    with pytest.raises(InputError, match="training seed 0, expected 1"):
        _run(root, ["trntk"], seed=1)


# ----------------------------------------------------------------------------- config
def _config():
    return {"seeds": [0, 1], "experiments": {
        "a": {"data": {"name": "digits"}, "model": {"name": "mlp"}, "train": {}, "kernels": ["entk", "trntk", "ck"]},
        "b": {"data": {"name": "digits"}, "model": {"name": "mlp"}, "train": {}, "kernels": ["entk"]}}}


def test_analysis_config_defaults_and_per_experiment_overrides():
    cfg = validate_config(_config())
    assert cfg["analysis"] == {"experiments": None, "seed": None, "kernels": None, "test_points": 4,
                               "selection_seed": 0, "top_k": 5}
    assert analysis_experiments(cfg) == ["a"]  # b has no kernel with a kGLM
    assert experiment_analysis(cfg, "a") == {"seed": 0, "kernels": ["trntk", "ck"], "test_points": 4,
                                             "selection_seed": 0, "top_k": 5}
    raw = _config()
    raw["analysis"] = {"top_k": 3, "seed": 1}
    raw["experiments"]["a"]["analysis"] = {"kernels": ["ck"], "test_points": [4, 9]}
    cfg = validate_config(raw)
    assert cfg["experiments"]["a"]["analysis"] == {"kernels": ["ck"], "test_points": [4, 9]}  # no defaults filled
    assert experiment_analysis(cfg, "a") == {"seed": 1, "kernels": ["ck"], "test_points": [4, 9],
                                             "selection_seed": 0, "top_k": 3}
    assert analysis_experiments(validate_config({**_config(), "analysis": {"experiments": []}})) == []


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(analysis={"experiments": ["nope"]}), "analysis.experiments: 'nope' is not an experiment"),
    (lambda c: c.update(analysis={"seed": 5}), "analysis.seed: 5 is not a training seed of 'a'"),
    (lambda c: c["experiments"]["a"].update(analysis={"kernels": ["pntk"]}),
     r"experiments.a.analysis.kernels: \['pntk'\] are not kernels of 'a'"),
    (lambda c: c["experiments"]["a"].update(analysis={"kernels": ["entk"]}), r"\['entk'\] have no kGLM"),
    (lambda c: c.update(analysis={"experiments": ["b"]}), "'b' has no kernel with a kGLM"),
    (lambda c: c.update(analysis={"test_points": 0}), "analysis.test_points"),
    (lambda c: c.update(analysis={"color": 1}), "analysis: unknown key"),
])
def test_analysis_config_errors_name_the_key(edit, message):
    cfg = copy.deepcopy(_config())
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


@pytest.mark.parametrize("path", ["config.yaml", "configs/paper_mnist2.yaml"])
def test_shipped_configs_analyse_every_experiment(path):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / path)
    assert analysis_experiments(cfg) == list(cfg["experiments"])
