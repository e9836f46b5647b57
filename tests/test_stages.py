"""The workflow's stage functions in-process: train -> kernel -> kGLM -> summary on tiny data."""
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ntkbench import kernels, models, store
from ntkbench.data import load_dataset, save_bundle
from ntkbench.kinds import options_for
from ntkbench.stages.common import InputError
from ntkbench.stages.kernels import kernel_stage
from ntkbench.stages.summary import collect_faithfulness, summary_stage
from ntkbench.stages.surrogates import kglm_stage
from ntkbench.stages.train import train_stage

CONFIG_OPTIONS = {"proj_dim": 64, "proj_type": "gaussian", "proj_seed": 0, "batch_size": 32,
                  "block_size": 24, "em_layers": None, "dtype": "float32"}
BLOCK = CONFIG_OPTIONS["block_size"]
KGLM = {"alpha": 1e-4, "seed": 0, "target": "labels", "class_weight": "balanced", "solver": "sgd"}


def opts(kind):
    return options_for(kind, CONFIG_OPTIONS)


def test_kernel_options_depend_only_on_what_a_kind_uses():
    assert opts("trntk") == {"batch_size": 32, "dtype": "float32"}
    assert opts("proj-pntk") == {
        "batch_size": 32, "dtype": "float32", "proj_dim": 64, "proj_type": "gaussian", "proj_seed": 0}
    assert opts("em")["em_layers"] is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    torch.set_num_threads(1)
    bundle = load_dataset({"name": "digits", "classes": [0, 1, 2], "max_train": 60, "max_test": 30})
    save_bundle(bundle, root / "data.npz")
    train_stage(root / "data.npz", {"name": "mlp", "hidden": [16, 16]},
                {"optimizer": "sgd", "lr": 1.0, "epochs": 20, "batch_size": 16, "allow_divergence": False}, seed=0, device="cpu",
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
    kernel_stage(root / "data.npz", root / "model.pt", kind, opts(kind), BLOCK, "cpu", out)
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
    kernel_stage(root / "data.npz", root / "model.pt", "trntk", opts("trntk"), BLOCK, "cpu", root / "k.h5")
    report = kglm_stage(root / "data.npz", root / "logits.npz", root / "model.pt", root / "k.h5", "trntk",
                        opts("trntk"), KGLM, root / "kglm.json", root / "kglm.npz")
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
    other = kglm_stage(root / "data.npz", root / "logits.npz", root / "model.pt", root / "k.h5", "trntk",
                       opts("trntk"), {**KGLM, "target": "predictions"}, root / "p.json", root / "p.npz")
    assert other["target"] == "predictions"

    records = [("toy", 0, "trntk", "default", root / "kglm.json"), ("toy", 1, "trntk", "default", root / "kglm.json")]
    summary = summary_stage(records, root / "s.csv", root / "ps.csv", root / "s.md", root / "s.png")
    row = summary.iloc[0]
    assert row["n_seeds"] == 2 and row["tau"] == pytest.approx(scores["tau"])
    assert row["tau_sem"] == pytest.approx(0.0, abs=1e-12)
    assert (root / "s.png").stat().st_size > 5000
    with pytest.raises(InputError, match="poisoned_test"):
        collect_faithfulness(records, split="poisoned_test")
    with pytest.raises(InputError, match="is filed as 'pntk'"):
        collect_faithfulness([("toy", 0, "pntk", "default", root / "kglm.json")])
    (root / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="broken.json"):
        collect_faithfulness([("toy", 0, "trntk", "default", root / "broken.json")])


# ----------------------------------------------------------------------------- what a stage refuses
@pytest.fixture(scope="module")
def kernels_done(trained):
    """A trntk and a trntk0 kernel file of the trained model, and a second model's trntk."""
    root, bundle = trained
    for kind in ("trntk", "trntk0"):
        kernel_stage(root / "data.npz", root / "model.pt", kind, opts(kind), BLOCK, "cpu", root / f"good_{kind}.h5")
    train_stage(root / "data.npz", {"name": "mlp", "hidden": [16, 16]},
                {"optimizer": "sgd", "lr": 1.0, "epochs": 20, "batch_size": 16, "allow_divergence": False}, seed=1, device="cpu",
                out_model=root / "model1.pt", out_logits=root / "logits1.npz", out_history=root / "hist1.csv")
    kernel_stage(root / "data.npz", root / "model1.pt", "trntk", opts("trntk"), BLOCK, "cpu", root / "other_model.h5")
    return root


def _kglm(root, kernel_file, kind="trntk", options=None):
    return kglm_stage(root / "data.npz", root / "logits.npz", root / "model.pt", root / kernel_file, kind,
                      options or opts(kind), KGLM, root / "r.json", root / "r.npz")


def _copy(root, src, dst):
    import shutil

    shutil.copy(root / src, root / dst)
    return dst


def test_kglm_refuses_a_kernel_of_another_kind(kernels_done):
    root = kernels_done
    with pytest.raises(store.KernelCheckError, match=r"bad_kind\.h5:train_train.*kind: file has 'trntk0', expected 'trntk'"):
        _kglm(root, _copy(root, "good_trntk0.h5", "bad_kind.h5"))


def test_kglm_refuses_a_kernel_of_another_model(kernels_done):
    with pytest.raises(store.KernelCheckError, match="model_fingerprint"):
        _kglm(kernels_done, "other_model.h5")


def test_kglm_refuses_other_options(kernels_done):
    with pytest.raises(store.KernelCheckError, match="identity_options"):
        _kglm(kernels_done, "good_trntk.h5", options={**opts("trntk"), "dtype": "float64"})


@pytest.mark.parametrize("damage, message", [
    (lambda k: k.__setitem__((3, 5), 0.9), "not symmetric"),
    (lambda k: (k.__setitem__((3, 5), 1.7), k.__setitem__((5, 3), 1.7)), r"\|k\| = 1.7 > 1"),
    (lambda k: k.__setitem__((4, 4), 0.5), "diagonal is not 1"),
    (lambda k: k.__setitem__((2, 7), np.nan), "non-finite"),
])
def test_kglm_refuses_overwritten_values(kernels_done, damage, message):
    root = kernels_done
    name = _copy(root, "good_trntk.h5", "damaged.h5")
    with h5py.File(root / name, "r+") as fh:
        k = fh["train_train"]["kernel"][...]
        damage(k)
        fh["train_train"]["kernel"][...] = k
    with pytest.raises(store.KernelCheckError, match=message):
        _kglm(root, name)


def test_kglm_refuses_a_file_that_is_not_hdf5(kernels_done):
    root = kernels_done
    (root / "text.h5").write_text("not a kernel")
    with pytest.raises(store.KernelCheckError, match=r"text\.h5: not a readable HDF5"):
        _kglm(root, "text.h5")


def test_kglm_refuses_logits_of_other_data(kernels_done, tmp_path):
    root = kernels_done
    with np.load(root / "logits.npz") as z:
        data = dict(z)
    data["test_y"] = data["test_y"][::-1].copy()
    np.savez(tmp_path / "logits.npz", **data)
    with pytest.raises(InputError, match="do not belong to this data"):
        kglm_stage(root / "data.npz", tmp_path / "logits.npz", root / "model.pt", root / "good_trntk.h5", "trntk",
                   opts("trntk"), KGLM, tmp_path / "r.json", tmp_path / "r.npz")


def test_stale_partial_kernel_is_discarded_and_recomputed(kernels_done, caplog):
    """A partial file of another model (an interrupted job before retraining) must not block."""
    import logging

    root = kernels_done
    out = root / "fresh.h5"
    _copy(root, "other_model.h5", "fresh.h5.partial")
    with caplog.at_level(logging.WARNING):
        kernel_stage(root / "data.npz", root / "model.pt", "trntk", opts("trntk"), BLOCK, "cpu", out)
    assert "discarding the partial kernel" in caplog.text and "model_fingerprint" in caplog.text
    np.testing.assert_array_equal(store.read_kernel(out, "test_train").kernel,
                                  store.read_kernel(root / "good_trntk.h5", "test_train").kernel)
    # An unreadable partial file (killed while being created) is discarded too.
    (root / "fresh2.h5.partial").write_bytes(b"\x89HDF\r\n garbage")
    kernel_stage(root / "data.npz", root / "model.pt", "trntk", opts("trntk"), BLOCK, "cpu", root / "fresh2.h5")
    assert not (root / "fresh2.h5.partial").exists()


# ----------------------------------------------------------------------------- tiled kernels
@pytest.mark.parametrize("kind", ["trntk", "proj-pntk", "em", "entk"])
def test_tiled_kernel_equals_untiled_bit_for_bit(trained, kind, tmp_path):
    from ntkbench.stages.kernels import KernelTileJob, kernel_gather_stage, kernel_tile_stage
    from ntkbench.stages.layout import kernel_tiles

    root, bundle = trained
    untiled = tmp_path / "untiled.h5"
    kernel_stage(root / "data.npz", root / "model.pt", kind, opts(kind), BLOCK, "cpu", untiled)
    tile_size = 2 * BLOCK  # 60 training points: tiles of 48 and 12 rows, three of them upper-triangular
    grid = kernel_tiles(root / "data.npz", tile_size)
    assert len(grid["train_train"]) == 3 and len(grid["test_train"]) == 2
    tiles = {}
    for group, cells in grid.items():
        for i, j in cells:
            path = tmp_path / f"{group}.{i}.{j}.h5"
            kernel_tile_stage(KernelTileJob(root / "data.npz", root / "model.pt", kind, opts(kind), BLOCK, tile_size,
                                            group, (i, j), "cpu", path))
            tiles.setdefault(group, {})[(i, j)] = path
    tiled = tmp_path / "tiled.h5"
    kernel_gather_stage(root / "data.npz", root / "model.pt", kind, opts(kind), BLOCK, tile_size, tiles, "cpu", tiled)
    with h5py.File(untiled, "r") as a, h5py.File(tiled, "r") as b:
        assert set(a) == set(b) == {"train_train", "test_train"}
        for group in a:
            assert set(a[group]) == set(b[group])
            for name in a[group]:
                np.testing.assert_array_equal(a[group][name][...], b[group][name][...], err_msg=f"{group}/{name}")
            skip = {"created", "finished", "tiles"}
            attrs_a = {k: v for k, v in a[group].attrs.items() if k not in skip}
            attrs_b = {k: v for k, v in b[group].attrs.items() if k not in skip}
            assert attrs_a.keys() == attrs_b.keys()
            for key in attrs_a:
                assert str(attrs_a[key]) == str(attrs_b[key]), key
    # A tile of another model is refused by the gather, naming the tile file.
    other = tmp_path / "other_tile.h5"
    train_stage(root / "data.npz", {"name": "mlp", "hidden": [16, 16]},
                {"optimizer": "sgd", "lr": 0.5, "epochs": 20, "batch_size": 16, "allow_divergence": False}, seed=3, device="cpu",
                out_model=tmp_path / "m3.pt", out_logits=tmp_path / "l3.npz", out_history=tmp_path / "h3.csv")
    kernel_tile_stage(KernelTileJob(root / "data.npz", tmp_path / "m3.pt", kind, opts(kind), BLOCK, tile_size,
                                    "test_train", (0, 0), "cpu", other))
    bad = {**tiles, "test_train": {**tiles["test_train"], (0, 0): other}}
    with pytest.raises(store.KernelCheckError, match="other_tile.h5:tile.*model_fingerprint"):
        kernel_gather_stage(root / "data.npz", root / "model.pt", kind, opts(kind), BLOCK, tile_size, bad, "cpu",
                            tmp_path / "bad.h5")


def test_jobs_are_built_from_snakemake_where_their_fields_say():
    """One helper reads every stage job from Snakemake's job object: named inputs, params,
    wildcards, output[0] and whole outputs, conversions, and files keyed by a param's order."""
    from types import SimpleNamespace

    from ntkbench.stages.analysis import AnalysisJob
    from ntkbench.stages.attribution.lds import LdsJob
    from ntkbench.stages.common import job_from_snakemake
    from ntkbench.stages.forensics import ForensicsJob
    from ntkbench.stages.kernels import KernelTileJob

    class Named(SimpleNamespace):  # Snakemake's Namedlist: attributes, items(), index
        def items(self):
            return vars(self).items()

        def __getitem__(self, i):
            return list(vars(self).values())[i]

    sm = SimpleNamespace(
        input=Named(data="d.npz", model="m.pt", logits="l.npz", kernels=["a.h5", "b.h5"], kglm=["a.json", "b.json"],
                    models=["m0.pt"], subsets=["s0.npz"], kglm_fits=["a.npz", "b.npz"],
                    kglm_reports=["a.json", "b.json"], gradients="g.npz", mislabel="x.npz",
                    ground_truth="gt.npz", influence=[]),
        output=Named(table="t.csv", figure="f.png"),
        params=Named(options={"proj_dim": 8}, block_size=4, tile_size=8, device="cpu", seeds=(0,), kernels=("trntk", "pntk"),
                     runs=[[0, "trntk"], [0, "pntk"]], kernel_options={}, settings={"top_k": 3}, seed="2",
                     model={"name": "mlp"}, train={"epochs": 1}),
        wildcards=Named(kernel="trntk", group="test_train", i="1", j="0", experiment="exp"),
    )
    tile = job_from_snakemake(KernelTileJob, sm)
    assert (tile.data_path, tile.kind, tile.group, tile.tile, tile.out_path, tile.logits_path) == \
        ("d.npz", "trntk", "test_train", (1, 0), "t.csv", "l.npz")
    forensics = job_from_snakemake(ForensicsJob, sm)
    assert forensics.kernel_paths == {(0, "trntk"): "a.h5", (0, "pntk"): "b.h5"}
    assert forensics.outputs == {"table": "t.csv", "figure": "f.png"} and forensics.seeds == [0]
    lds_job = job_from_snakemake(LdsJob, sm)
    assert lds_job.seed == 2 and lds_job.kglm_npz_paths == {"trntk": "a.npz", "pntk": "b.npz"}
    assert lds_job.ground_truth_path == "gt.npz" and lds_job.influence_path is None  # none: no IF rows
    assert lds_job.model_spec == {"name": "mlp"} and lds_job.train_cfg == {"epochs": 1}
    assert job_from_snakemake(AnalysisJob, sm, seed=5).seed == 5  # explicit values win
    sm.params.kernels = ("trntk",)  # two files for one kernel: refused, not silently cut
    with pytest.raises(ValueError):
        job_from_snakemake(LdsJob, sm)
