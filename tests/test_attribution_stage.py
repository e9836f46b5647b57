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
from ntkbench.stages.attribution import common, ground_truth, lds, scores, subsets
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
SETTINGS = {"num_subsets": 6, "fraction": 0.5, "subset_seed": 3, "subset_draw": "ntkbench", "seed_scheme": "same",
            "target": "margin", "subsets_per_job": 3,
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
    ground_truth.ground_truth_stage(root / "data.npz", chunks, MODEL, TRAIN, SEED, SETTINGS, root / "truth.npz")
    paths = dict(model_spec=MODEL, train_cfg=TRAIN, ground_truth_path=root / "truth.npz", influence_path=None,
                 kernels=KERNELS, kernel_paths={k: root / f"{k}.h5" for k in KERNELS},
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


def test_ground_truth_refuses_foreign_or_incomplete_subsets(run, tmp_path):
    root, _, _, _, paths = run
    chunks = [root / "subsets0.npz", root / "subsets1.npz"]
    with pytest.raises(InputError, match="expected 0..5"):
        ground_truth.ground_truth_stage(root / "data.npz", chunks[:1], MODEL, TRAIN, SEED, SETTINGS, tmp_path / "t.npz")
    with pytest.raises(InputError, match="subsets0.npz: subsets trained with"):
        ground_truth.ground_truth_stage(root / "data.npz", chunks, MODEL, TRAIN, SEED, {**SETTINGS, "subset_seed": 4},
                                        tmp_path / "t.npz")
    # a subset file of other data
    other = load_bundle(root / "data.npz")
    other.train.y[0] = (other.train.y[0] + 1) % 3
    save_bundle(other, tmp_path / "other.npz")
    with pytest.raises(InputError, match="other data"):
        ground_truth.ground_truth_stage(tmp_path / "other.npz", chunks, MODEL, TRAIN, SEED, SETTINGS, tmp_path / "t.npz")
    assert not (tmp_path / "t.npz").exists()


def test_lds_stage_refuses_a_ground_truth_of_another_model_or_subset_list(run, tmp_path):
    """The ground truth is a product of its own: the LDS stage (and anyone loading it) refuses
    one of another network recipe, subset list or data, naming the file."""
    from ntkbench.attribution.ground_truth import GroundTruth, ProvenanceError

    root, bundle, table, _, paths = run
    truth_path = root / "truth.npz"
    job = dict(experiment="tiny3", data_path=root / "data.npz", model_path=root / "model.pt", seed=SEED,
               out_csv=tmp_path / "x.csv")
    with pytest.raises(InputError, match=r"truth.npz: a ground truth of model .*expected .*'hidden': \[32\]"):
        lds.lds_stage(lds.LdsJob(settings=SETTINGS, **job, **{**paths, "model_spec": {**MODEL, "hidden": [32]}}))
    with pytest.raises(InputError, match="truth.npz: a ground truth of train"):
        lds.lds_stage(lds.LdsJob(settings=SETTINGS, **job, **{**paths, "train_cfg": {**TRAIN, "epochs": 21}}))
    with pytest.raises(InputError, match="truth.npz: a ground truth of subsets.subset_seed = 3, expected 4"):
        lds.lds_stage(lds.LdsJob(settings={**SETTINGS, "subset_seed": 4}, **job, **paths))
    other = load_bundle(root / "data.npz")
    other.train.y[0] = (other.train.y[0] + 1) % 3
    save_bundle(other, tmp_path / "other.npz")
    with pytest.raises(InputError, match="truth.npz: a ground truth of data"):
        lds.lds_stage(lds.LdsJob(settings=SETTINGS, **{**job, "data_path": tmp_path / "other.npz"}, **paths))
    # the library API: the stored subset list, and scoring without retraining
    truth = GroundTruth.load(truth_path, model=MODEL, subset_list=draw_subsets(60, 6, 0.5, seed=3))
    with pytest.raises(ProvenanceError, match="truth.npz: a ground truth of another subset list"):
        GroundTruth.load(truth_path, subset_list=draw_subsets(60, 6, 0.5, seed=4))
    grads = np.load(root / "grads.npz")
    row = table[table["method"] == "grad-dot"].iloc[0]
    assert truth.lds(grads["scores_grad-dot"], "margin").mean == pytest.approx(row["lds"], abs=1e-15)
    # a damaged provenance: its masks no longer match the subset list it records
    arrays = dict(np.load(truth_path))
    arrays["masks"] = arrays["masks"].copy()
    arrays["masks"][0, :2] = ~arrays["masks"][0, :2]
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(ProvenanceError, match="edited.npz: its masks do not match"):
        GroundTruth.load(tmp_path / "edited.npz")


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


def test_dattri_draw_offset_seeds_and_negated_loss_target(run, tmp_path):
    """dattri's protocol through the stages: subset j = default_rng(subset_seed + j).choice(N,
    int(N/2)), model seed = seed + j, target = the negated test cross-entropy; LDS is the
    Spearman over subsets of (summed scores, target), checked by hand for one test point."""
    from scipy.stats import spearmanr

    from ntkbench.attribution.lds import compute_lds

    root, bundle, _, _, paths = run
    settings = {**SETTINGS, "subset_draw": "dattri", "seed_scheme": "offset", "target": "neg_loss"}
    subsets.subsets_stage(root / "data.npz", MODEL, TRAIN, SEED, [0, 1, 2], settings, "cpu", tmp_path / "d0.npz")
    subsets.subsets_stage(root / "data.npz", MODEL, TRAIN, SEED, [3, 4, 5], settings, "cpu", tmp_path / "d1.npz")
    part = np.load(tmp_path / "d0.npz")
    for row, j in enumerate(part["index"]):
        picked = np.random.default_rng(3 + int(j)).choice(60, 30, replace=False)
        assert np.flatnonzero(part["mask"][row]).tolist() == sorted(picked.tolist())
        assert int(part["model_seed"][row]) == SEED + int(j)
    truth = ground_truth.ground_truth_stage(root / "data.npz", [tmp_path / "d0.npz", tmp_path / "d1.npz"], MODEL, TRAIN,
                                            SEED, settings, tmp_path / "truth.npz")
    masks, target = truth.masks, truth.outputs("neg_loss")
    logits = torch.as_tensor(np.concatenate([part["logits"], np.load(tmp_path / "d1.npz")["logits"]]), dtype=torch.float64)
    y = bundle.test.y
    expected = -torch.stack([torch.nn.functional.cross_entropy(z, y, reduction="none") for z in logits]).numpy()
    np.testing.assert_allclose(target, expected, rtol=1e-12)
    scores = np.random.default_rng(0).normal(size=(30, 60))
    by_hand = spearmanr(masks.astype(float) @ scores[4], target[:, 4]).correlation
    assert compute_lds(scores, masks, target).per_test[4] == pytest.approx(by_hand, abs=1e-12)
    # a file of the other draw (or target computed from another scheme) is refused, naming it
    with pytest.raises(InputError, match="d0.npz: subsets trained with"):
        ground_truth.read_subsets([tmp_path / "d0.npz", tmp_path / "d1.npz"], bundle, 6, SETTINGS, SEED)
    table = lds.lds_stage(lds.LdsJob("tiny3", root / "data.npz", root / "model.pt", SEED, settings=settings,
                                     out_csv=tmp_path / "t.csv",
                                     **{**paths, "ground_truth_path": tmp_path / "truth.npz"}))
    assert (table["target"] == "neg_loss").all() and table["lds"].between(-1, 1).all()


def test_dattri_methods_through_the_stages(run, tmp_path):
    """dattri's variants: TracIn over final networks of seeds s, s+1 (weight 1e-3), Grad-Dot on
    projected loss gradients, TRAK-1/TRAK-2 on the stored LDS subset networks, no mislabel twin.
    Projected Grad-Dot and seed-TracIn are checked against brute force (autograd, explicit R)."""
    from ntkbench import models as zoo
    from ntkbench.attribution import gradients
    from ntkbench.kernels.projection import BlockProjector
    from ntkbench.stages.attribution.subsets import read_subset_states
    from ntkbench.attribution.retrain import train_with_checkpoints

    root, bundle, _, _, paths = run
    settings = {**SETTINGS, "gradient_proj_dim": 24, "tracin": {"scheme": "seeds", "models": 2, "weight": 1e-3},
                "trak": {**SETTINGS["trak"], "ensemble": [1, 2], "ensemble_data": "subsets", "ridge": 0.0},
                "mislabel": None, "store_weights": True}
    chunks = [tmp_path / "s0.npz", tmp_path / "s1.npz"]
    for g, path in enumerate(chunks):
        subsets.subsets_stage(root / "data.npz", MODEL, TRAIN, SEED, [3 * g, 3 * g + 1, 3 * g + 2], settings, "cpu", path)
    states = read_subset_states(chunks, 2)
    net, _ = zoo.load_checkpoint(root / "model.pt")
    assert sorted(states[0]) == sorted(net.state_dict())
    scores.gradients_stage(root / "data.npz", root / "model.pt", MODEL, TRAIN, SEED, settings, "cpu",
                           tmp_path / "grads.npz", subset_paths=chunks)
    grads = np.load(tmp_path / "grads.npz")
    assert grads["methods"].tolist() == ["tracin-seeds", "grad-dot", "grad-cos", "trak-1", "trak-2"]
    # the workflow trains TracIn's next-seed networks as ordinary train jobs: same scores
    train_stage(root / "data.npz", MODEL, TRAIN, SEED + 1, "cpu", tmp_path / "m1.pt", tmp_path / "l1.npz",
                tmp_path / "h1.csv")
    scores.gradients_stage(root / "data.npz", root / "model.pt", MODEL, TRAIN, SEED, settings, "cpu",
                           tmp_path / "grads_jobs.npz", subset_paths=chunks, tracin_model_paths=[tmp_path / "m1.pt"])
    np.testing.assert_array_equal(np.load(tmp_path / "grads_jobs.npz")["scores_tracin-seeds"],
                                  grads["scores_tracin-seeds"])
    with pytest.raises(InputError, match="model.pt: a network of training seed 1, expected 2"):
        scores.gradients_stage(root / "data.npz", root / "model.pt", MODEL, TRAIN, SEED, settings, "cpu",
                               tmp_path / "x.npz", subset_paths=chunks, tracin_model_paths=[root / "model.pt"])

    # brute force: per-sample loss gradients by autograd, explicit R (24 x P), seed 0
    layout = gradients.parameter_layout(net)
    R = BlockProjector(24, "gaussian", 0, torch.device("cpu"), torch.float64).dense_matrix(layout).numpy()

    def loss_grads(model, x, y):
        rows = []
        for xi, yi in zip(x, y):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(xi[None].double()), yi[None]).backward()
            rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]).numpy())
        return np.stack(rows) @ R

    def float64(model):
        model = model.double().eval()
        return model

    m0 = float64(zoo.load_checkpoint(root / "model.pt")[0])
    te, tr = bundle.test, bundle.train
    expected = loss_grads(m0, te.x, te.y) @ loss_grads(m0, tr.x, tr.y).T
    np.testing.assert_allclose(grads["scores_grad-dot"], expected, rtol=1e-3, atol=1e-6 * np.abs(expected).max())
    # seed s + 1's network, trained with the train stage's recipe (that this reproduces model.pt
    # for seed s is checked by the gradients stage itself)
    m1 = float64(train_with_checkpoints(bundle, MODEL, TRAIN, SEED + 1, "cpu").model)
    tracin = 1e-3 * sum(loss_grads(m, te.x, te.y) @ loss_grads(m, tr.x, tr.y).T for m in (m0, m1))
    np.testing.assert_allclose(grads["scores_tracin-seeds"], tracin, rtol=1e-3, atol=1e-6 * np.abs(tracin).max())

    ground_truth.ground_truth_stage(root / "data.npz", chunks, MODEL, TRAIN, SEED, settings, tmp_path / "truth.npz")
    table = lds.lds_stage(lds.LdsJob("tiny3", root / "data.npz", root / "model.pt", SEED, settings=settings,
                                     out_csv=tmp_path / "t.csv",
                                     **{**paths, "gradients_path": tmp_path / "grads.npz", "mislabel_path": None,
                                        "ground_truth_path": tmp_path / "truth.npz"}))
    assert set(table["method"]) >= {"tracin-seeds", "trak-1", "trak-2"}
    assert table["auc"].isna().all() and (table["n_flipped"] == 0).all()
    table_stage([tmp_path / "t.csv"], tmp_path / "a.csv", tmp_path / "a.md", tmp_path / "a.png")
    text = (tmp_path / "a.md").read_text()
    assert "TRAK-2" in text and "TracIn (seeds)" in text and "no noisy-label twin" in text
    # TRAK on subset networks needs them stored
    with pytest.raises(InputError, match="no stored subset networks"):
        read_subset_states([root / "subsets0.npz"], 1)


def test_influence_stage_rows_and_skip(run, tmp_path):
    """The influence stage's scores become rows ``if@<λ>`` of the LDS table, each the LDS of
    the stored scores against the ground truth; a network over ``max_params`` is skipped with
    its reason, and the table has no influence rows."""
    from ntkbench.attribution.ground_truth import GroundTruth
    from ntkbench.stages.attribution.influence import influence_stage

    root, _, _, _, paths = run
    settings = {**SETTINGS, "influence": {"damping": [0.1, 1.0], "max_params": 20000}}
    assert influence_stage(root / "data.npz", root / "model.pt", SEED, settings, "cpu", tmp_path / "if.npz") \
        == ["if@0.1", "if@1"]
    table = lds.lds_stage(lds.LdsJob("tiny3", root / "data.npz", root / "model.pt", SEED, settings=settings,
                                     out_csv=tmp_path / "t.csv", **{**paths, "influence_path": tmp_path / "if.npz"}))
    rows = table[table["method"].str.startswith("if@")].set_index("method")
    truth = GroundTruth.load(root / "truth.npz")
    stored = np.load(tmp_path / "if.npz")
    for method in ("if@0.1", "if@1"):
        assert rows.loc[method, "lds"] == pytest.approx(truth.lds(stored[f"scores_{method}"]).mean, abs=1e-15)
        assert np.isnan(rows.loc[method, "auc"])
    with pytest.raises(InputError, match="seed 1, expected 2"):
        influence_stage(root / "data.npz", root / "model.pt", SEED + 1, settings, "cpu", tmp_path / "x.npz")
    small = {**settings, "influence": {"damping": [0.1], "max_params": 10}}
    assert influence_stage(root / "data.npz", root / "model.pt", SEED, small, "cpu", tmp_path / "skip.npz") == []
    assert "max_params = 10" in str(np.load(tmp_path / "skip.npz")["skipped"])
    table = lds.lds_stage(lds.LdsJob("tiny3", root / "data.npz", root / "model.pt", SEED, settings=settings,
                                     out_csv=tmp_path / "t2.csv", **{**paths, "influence_path": tmp_path / "skip.npz"}))
    assert not table["method"].str.startswith("if@").any()
