"""The attribution benchmark's stages in-process on tiny data: subsets -> gradients ->
mislabel twin -> LDS table -> joined table and figure, with the checks every stage runs."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from ntkbench.attribution.subsets import draw_subsets
from ntkbench.data import load_bundle, load_dataset, save_bundle
from ntkbench.data.label_noise import flip_labels
from ntkbench.kinds import options_for
from ntkbench.stages.attribution import common, lds, scores, subsets
from ntkbench.stages.attribution.table import table_stage
from ntkbench.stages.common import InputError
from ntkbench.stages.kernels import kernel_stage
from ntkbench.stages.surrogates import kglm_stage
from ntkbench.stages.train import train_stage

KERNEL_OPTIONS = {"proj_dim": 32, "proj_type": "gaussian", "proj_seed": 0, "batch_size": 64, "block_size": 64,
                  "em_layers": None, "dtype": "float32"}
KGLM = {"alpha": 1e-3, "seed": 0, "target": "labels", "class_weight": "balanced", "max_iter": 50, "solver": "lbfgs"}
MODEL = {"name": "mlp", "hidden": [16]}
TRAIN = {"optimizer": "sgd", "lr": 1.0, "epochs": 20, "batch_size": 16, "allow_divergence": False}
KERNELS = ["trntk", "ck"]
SETTINGS = {"num_subsets": 6, "fraction": 0.5, "subset_seed": 3, "seed_scheme": "same", "subsets_per_job": 3,
            "num_checkpoints": 2, "batch_size": 64, "signed_similarity": False,
            "trak": {"proj_dim": 16, "proj_type": "gaussian", "proj_seed": 0, "ridge": 0.01, "ensemble": 1},
            "mislabel": {"fraction": 0.2, "seed": 0}}
SEED = 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Every stage once, on 3-class digits with 60 training and 30 test points."""
    root = tmp_path_factory.mktemp("attribution")
    torch.set_num_threads(1)
    bundle = load_dataset({"name": "digits", "classes": [0, 1, 2], "max_train": 60, "max_test": 30})
    save_bundle(bundle, root / "data.npz")
    train_stage(root / "data.npz", MODEL, TRAIN, SEED, "cpu", root / "model.pt", root / "logits.npz", root / "hist.csv")
    opts = {k: options_for(k, KERNEL_OPTIONS) for k in KERNELS}
    for k in KERNELS:
        kernel_stage(root / "data.npz", root / "model.pt", k, opts[k], 64, "cpu", root / f"{k}.h5")
        kglm_stage(root / "data.npz", root / "logits.npz", root / "model.pt", root / f"{k}.h5", k, opts[k], KGLM,
                   root / f"{k}.json", root / f"{k}.npz")
    chunks = [root / "subsets0.npz", root / "subsets1.npz"]
    for g, path in enumerate(chunks):
        subsets.subsets_stage(root / "data.npz", MODEL, TRAIN, SEED, [3 * g, 3 * g + 1, 3 * g + 2], SETTINGS, "cpu", path)
    scores.gradients_stage(root / "data.npz", root / "model.pt", MODEL, TRAIN, SEED, SETTINGS, "cpu", root / "grads.npz")
    report = scores.mislabel_stage(root / "data.npz", MODEL, TRAIN, SEED, KERNELS, opts, KGLM, SETTINGS, "cpu",
                              root / "mislabel.npz", root / "mislabel.json")
    paths = dict(subset_paths=chunks, kernels=KERNELS, kernel_paths={k: root / f"{k}.h5" for k in KERNELS},
                 kernel_options=opts, kglm_npz_paths={k: root / f"{k}.npz" for k in KERNELS},
                 kglm_json_paths={k: root / f"{k}.json" for k in KERNELS}, gradients_path=root / "grads.npz",
                 mislabel_path=root / "mislabel.npz")
    table = lds.lds_stage(lds.LdsJob("tiny3", root / "data.npz", root / "model.pt", SEED, settings=SETTINGS,
                        out_csv=root / "tiny3.csv", **paths))
    return root, bundle, table, report, paths


def test_subset_draws_are_reproducible_through_the_stage(run):
    root, bundle, *_ = run
    parts = [np.load(root / f"subsets{g}.npz") for g in range(2)]
    masks = np.concatenate([p["mask"] for p in parts])
    np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), np.arange(6))
    np.testing.assert_array_equal(masks, draw_subsets(60, 6, 0.5, seed=3))
    assert (masks.sum(1) == 30).all() and len({m.tobytes() for m in masks}) == 6
    # scheme "same": every subset network has the attributed network's seed
    assert all((p["model_seed"] == SEED).all() for p in parts)
    assert parts[0]["margins"].shape == (3, 30) and np.isfinite(parts[0]["margins"]).all()
    # rerunning one job gives the same subsets and the same networks
    subsets.subsets_stage(root / "data.npz", MODEL, TRAIN, SEED, [0, 1, 2], SETTINGS, "cpu", root / "again.npz")
    again = np.load(root / "again.npz")
    np.testing.assert_array_equal(again["mask"], parts[0]["mask"])
    np.testing.assert_array_equal(again["margins"], parts[0]["margins"])


def test_lds_table_has_every_method_with_real_values(run):
    _, _, table, _, _ = run
    assert list(table.columns) == common.TABLE_COLUMNS
    expected = [(m, k) for k in KERNELS for m in common.KERNEL_METHODS] + [
        (m, "") for m in ("tracin", "grad-dot", "grad-cos", "trak")]
    assert list(zip(table["method"], table["kernel"])) == expected
    assert table["lds"].between(-1, 1).all() and (table["lds_sem"] > 0).all()
    assert (table["lds_n_subsets"] == 6).all() and (table["lds_n_test"] == 30).all()
    assert table["auc"].between(0, 1).all() and (table["n_flipped"] == 12).all()
    kglm = table[table["method"] == "kglm"]
    assert kglm["tau"].between(-1, 1).all() and kglm["tau_true_class"].notna().all()
    assert table[table["method"] != "kglm"]["tau"].isna().all()
    # normalised kernels: κ(x, x) = 1 for every point, no detection signal; Grad-Cos likewise
    sim = table.set_index(["method", "kernel"])
    assert sim.loc[("kernel-sim", "trntk"), "auc"] == 0.5 and sim.loc[("grad-cos", ""), "auc"] == 0.5
    # the loss-gradient magnitude finds flipped labels on this easy task
    assert sim.loc[("grad-dot", ""), "auc"] > 0.8


def test_mislabel_twin_flips_the_configured_labels(run):
    root, bundle, _, report, _ = run
    data = np.load(root / "mislabel.npz")
    _, flipped = flip_labels(bundle.train.y.numpy(), 3, 0.2, seed=0)
    np.testing.assert_array_equal(data["flipped"], flipped)
    assert (data["noisy_y"][flipped] != bundle.train.y.numpy()[flipped]).all()
    assert report["n_flipped"] == 12 and set(report["kernels"]) == set(KERNELS)
    assert json.loads((root / "mislabel.json").read_text())["auc"]["grad-dot"] == pytest.approx(report["auc"]["grad-dot"])
    # the same twin through a config's data.label_noise block
    noisy = load_dataset({"name": "digits", "classes": [0, 1, 2], "max_train": 60, "max_test": 30,
                          "label_noise": {"fraction": 0.2, "seed": 0}})
    np.testing.assert_array_equal(noisy.train.y.numpy(), data["noisy_y"])
    np.testing.assert_array_equal(noisy.extra["flipped"], flipped)


def test_gradients_stage_reproduces_the_trained_network(run):
    root, *_ = run
    grads = np.load(root / "grads.npz")
    assert float(grads["max_weight_difference"]) == 0.0
    assert grads["checkpoint_epochs"].tolist() == [10, 20]
    assert grads["scores_tracin"].shape == (30, 60)


def test_table_stage_joins_experiments(run, tmp_path):
    root, _, table, _, _ = run
    other = table.assign(experiment="tiny3-copy")
    other.to_csv(tmp_path / "copy.csv", index=False)
    joined = table_stage([root / "tiny3.csv", tmp_path / "copy.csv"], tmp_path / "a.csv", tmp_path / "a.md",
                           tmp_path / "a.png")
    assert len(joined) == 2 * len(table)
    back = pd.read_csv(tmp_path / "a.csv")
    assert list(back.columns) == common.TABLE_COLUMNS
    md = (tmp_path / "a.md").read_text()
    assert "tiny3: LDS" in md and "tiny3-copy: AUC" in md and "kGLM · trntk" in md and "TRAK" in md
    assert (tmp_path / "a.png").stat().st_size > 10_000
    with pytest.raises(InputError, match="twice"):
        table_stage([root / "tiny3.csv", root / "tiny3.csv"], tmp_path / "b.csv", tmp_path / "b.md",
                      tmp_path / "b.png")


def test_lds_stage_refuses_foreign_or_incomplete_subsets(run, tmp_path):
    root, _, _, _, paths = run
    with pytest.raises(InputError, match="expected 0..5"):
        lds.lds_stage(lds.LdsJob("tiny3", root / "data.npz", root / "model.pt", SEED, settings=SETTINGS, out_csv=tmp_path / "x.csv",
                    **{**paths, "subset_paths": paths["subset_paths"][:1]}))
    with pytest.raises(InputError, match="trained with"):
        lds.lds_stage(lds.LdsJob("tiny3", root / "data.npz", root / "model.pt", SEED, settings={**SETTINGS, "subset_seed": 4},
                    out_csv=tmp_path / "x.csv", **paths))
    # a subset file of other data
    other = load_bundle(root / "data.npz")
    other.train.y[0] = (other.train.y[0] + 1) % 3
    save_bundle(other, tmp_path / "other.npz")
    with pytest.raises(InputError, match="other data"):
        lds.lds_stage(lds.LdsJob("tiny3", tmp_path / "other.npz", root / "model.pt", SEED, settings=SETTINGS,
                    out_csv=tmp_path / "x.csv", **paths))


def test_config_attribution_block_defaults_and_label_noise():
    from ntkbench.config import ConfigError, validate_config

    exp = {"data": {"name": "digits", "label_noise": {"fraction": 0.1, "seed": 2}}, "model": {"name": "mlp"},
           "train": {}, "kernels": ["trntk"]}
    cfg = validate_config({"experiments": {"e": exp}, "attribution": {"experiments": ["e"]}})
    a = cfg["attribution"]
    assert (a["num_subsets"], a["fraction"], a["seed_scheme"], a["subsets_per_job"], a["seed"]) == (64, 0.5, "same", 16, None)
    assert a["mislabel"] == {"fraction": 0.1, "seed": 0} and a["trak"]["proj_dim"] == 128
    assert cfg["resources"]["attribution"]["threads"] == 1
    assert validate_config({"experiments": {"e": exp}})["attribution"]["experiments"] == []   # off unless listed
    with pytest.raises(ConfigError, match="attribution.num_subsets"):
        validate_config({"experiments": {"e": exp}, "attribution": {"num_subsets": 1}})
    with pytest.raises(ConfigError, match="label_noise"):
        validate_config({"experiments": {"e": {**exp, "data": {"name": "digits", "label_noise": {"seed": 1}}}}})
