"""Fault cases of issue 9 at library level: each ends in a clear error or a correct result,
never in a wrong number (config, kernels, HDF5 store, atomic writes, modular-addition tables)."""
import copy
import os
import stat

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from ntkbench import kernels, store
from ntkbench.config import (
    ConfigError,
    experiment_seeds,
    is_prime,
    modadd_experiment_config,
    modadd_min_top_k,
    validate_config,
)
from ntkbench.kernels import NonFiniteKernelError
from ntkbench.spectral.cliffs import CliffParams
from ntkbench.spectral.modadd import OVERLAP_TABLE_COLUMNS, cliff_heatmaps, expected_cliffs, overlap_table
from ntkbench.utils import atomic_path, atomic_savez, atomic_write_text


@pytest.fixture()
def default_config():
    with open("config.yaml") as fh:
        return yaml.safe_load(fh)


def _error(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    return str(err.value)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("edit, key", [
    (lambda c: c["experiments"]["digits2-mlp"]["train"].update(lr=float("inf")), "experiments.digits2-mlp.train.lr"),
    (lambda c: c["kglm"].update(alpha=float("nan")), "kglm.alpha"),
    (lambda c: c["spectral"]["tms"]["runs"][1].update(sparsity=float("-inf")), "spectral.tms.runs.1.sparsity"),
    (lambda c: c["spectral"]["tms"].update(betas=[0, float("nan")]), "spectral.tms.betas.1"),
    (lambda c: c["spectral"]["modadd"]["cliffs"].update(min_ratio=float("inf")), "spectral.modadd.cliffs.min_ratio"),
])
def test_non_finite_numbers_are_rejected_naming_the_key(default_config, edit, key):
    edit(default_config)
    assert f"{key}: " in _error(default_config) and "not a finite number" in _error(default_config)


def test_non_finite_numbers_from_yaml_text(default_config):
    text = yaml.safe_dump(default_config).replace("lr: 0.05", "lr: .inf")
    assert "spectral.modadd.lr: inf is not a finite number" in _error(yaml.safe_load(text))


def test_spectral_only_config_validates(default_config):
    spectral_only = {"spectral": default_config["spectral"]}
    for cfg in (spectral_only, {**spectral_only, "experiments": {}}):
        filled = validate_config(cfg)
        assert filled["experiments"] == {}  # the schema's default: stages can iterate it
        assert filled["spectral"]["modadd"]["top_k"] == 200
    assert validate_config({"spectral": {"tms": {}}})["spectral"]["tms"]["n_features"] == 50
    with pytest.raises(KeyError, match="no experiment 'digits2-mlp'"):
        experiment_seeds(validate_config(spectral_only), "digits2-mlp")


@pytest.mark.parametrize("cfg", [{}, {"experiments": {}}, {"experiments": {}, "spectral": {}}, {"spectral": {}}])
def test_config_with_nothing_to_run_is_rejected(cfg):
    assert "nothing to run" in _error(cfg)


def test_experiment_names_must_be_unique_across_blocks(default_config):
    default_config["spectral"]["modadd"]["experiments"] = {"digits2-cnn": {"p": 29}}
    assert "experiments.digits2-cnn: the name 'digits2-cnn' is also used by spectral.modadd.experiments" \
        in _error(default_config)


def test_primes():
    assert [n for n in range(40) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m.update(experiments={"m": {"p": 15}}), "spectral.modadd.experiments.m.p: 15 is not a prime"),
    (lambda m: m.update(p=9, experiments={"m": {}}), "spectral.modadd.p: 9 is not a prime"),
    (lambda m: m.update(experiments={"m": {"p": 3}}), "spectral.modadd.experiments.m.p: p = 3 is too small"),
    # top_k <= 2(p-1) is the KeyError('epoch') of the issue; the report needs 4p - 2 eigenvalues
    (lambda m: m.update(top_k=56), "spectral.modadd.top_k: 56 is too small for experiment 'modadd-p29' (p = 29)"),
    (lambda m: m.update(top_k=113), "top_k >= 4p − 2 = 114"),
    (lambda m: m.update(experiments={"big": {"p": 101}}), "spectral.modadd.top_k: 200 is too small for experiment 'big'"),
    (lambda m: m.update(store_vectors=100), "spectral.modadd.store_vectors: 100 eigenvectors are too few"),
    (lambda m: m.update(experiments={"m": {"p": 5, "train_fraction": 0.01}}),
     "spectral.modadd.experiments.m.train_fraction: 0.01 of the p² = 25 pairs of experiment 'm' leaves an empty"),
    (lambda m: m.update(train_fraction=0.001), "spectral.modadd.train_fraction: 0.001 of the p² = 841 pairs"),
])
def test_modadd_settings_checked_against_p(default_config, edit, expected):
    edit(default_config["spectral"]["modadd"])
    assert expected in _error(default_config)


def test_modadd_relation_boundary(default_config):
    modadd = default_config["spectral"]["modadd"]
    modadd.update(top_k=modadd_min_top_k(29), store_vectors=modadd_min_top_k(29) - 1)
    cfg = validate_config(default_config)
    assert modadd_experiment_config(cfg["spectral"]["modadd"], "modadd-p29")["p"] == 29
    # exactly what the expected blocks need: top mode + two cliffs + the eigenvalue after them
    assert modadd_min_top_k(29) == expected_cliffs(29)["cliff2"][1] + 1


# ----------------------------------------------------------------------------- modadd tables
def _short_spectra(p: int, k: int, n_vec: int) -> dict:
    rng = np.random.default_rng(0)
    ev = np.sort(rng.uniform(0.1, 1.0, size=(2, 1, k)), axis=-1)[..., ::-1]
    vecs = rng.standard_normal((2, 1, p * p, n_vec))
    pairs = np.array([(a, b) for a in range(p) for b in range(p)])
    return {"epochs": np.array([0, 10]), "layers": np.array(["total"]), "eigenvalues": ev,
            "eigenvectors": vecs, "pairs": pairs, "p": np.array(p)}


def test_overlap_table_copes_with_fewer_modes_than_the_cliffs():
    # p = 7: cliff 1 ends at mode 13, cliff 2 at 25; a spectrum of 8 modes holds neither.
    spectra = _short_spectra(7, 8, 8)
    rows = overlap_table(spectra, spectra["pairs"], 7, CliffParams())
    table = pd.DataFrame(rows, columns=OVERLAP_TABLE_COLUMNS)
    assert len(table) == 4 and set(table["block"]) == {"cliff1", "cliff2"}
    assert table[["drop_ratio", "overlap_sum", "overlap_a"]].isna().all().all()
    assert not table["detected"].any()
    # what modadd_report_stage does with it (the KeyError: 'epoch')
    curve = pd.DataFrame({"epoch": [0, 10], "train_acc": [0.1, 0.9], "test_acc": [0.1, 0.2]})
    merged = table.merge(curve, on="epoch", how="left")
    assert len(merged) == 4
    assert cliff_heatmaps(spectra["eigenvectors"][0, 0], spectra["pairs"], 7) == {}


def test_overlap_table_partial_spectrum_keeps_what_it_can():
    # 20 eigenvalues and vectors: cliff 1 (modes 1..12) complete, cliff 2 (13..24) not.
    spectra = _short_spectra(7, 20, 20)
    table = pd.DataFrame(overlap_table(spectra, spectra["pairs"], 7, CliffParams()), columns=OVERLAP_TABLE_COLUMNS)
    c1, c2 = table[table["block"] == "cliff1"], table[table["block"] == "cliff2"]
    assert c1[["drop_ratio", "overlap_sum"]].notna().all().all()
    assert c2[["drop_ratio", "overlap_sum"]].isna().all().all()
    # a zero eigenvalue after a block is an infinite drop, not a division warning or a negative ratio
    spectra["eigenvalues"][:, :, 13:] = 0.0
    spectra["eigenvalues"][0, 0, 13] = -1e-17
    table = pd.DataFrame(overlap_table(spectra, spectra["pairs"], 7, CliffParams()), columns=OVERLAP_TABLE_COLUMNS)
    assert np.isinf(table[table["block"] == "cliff1"]["drop_ratio"]).all()


def test_spectral_library_refuses_non_finite_input():
    from ntkbench.spectral.cliffs import detect_cliffs
    from ntkbench.spectral.eigen import topk_class_weighted, topk_eigh, topk_from_jacobian, topk_matrix_free

    a = np.eye(4)
    a[1, 2] = a[2, 1] = np.nan
    with pytest.raises(ValueError, match="topk_eigh: the matrix holds non-finite"):
        topk_eigh(a, 2)  # LAPACK returned [1, nan] here before
    jac = np.ones((6, 3))
    jac[0, 0] = np.inf
    with pytest.raises(ValueError, match="the Jacobian holds non-finite"):
        topk_from_jacobian(jac, 2)
    with pytest.raises(ValueError, match="the Jacobian holds non-finite"):
        topk_class_weighted(jac.reshape(3, 2, 3), 2, [np.ones(2)])
    with pytest.raises(ValueError, match="class weights holds non-finite"):
        topk_class_weighted(np.ones((3, 2, 3)), 2, [np.array([1.0, np.nan])])
    with pytest.raises(ValueError, match="product #1 holds non-finite"):
        topk_matrix_free(lambda v: v * np.nan, 10, 2)
    for ev in ([np.nan, 1, 0.5, 0.1], [10, 1, np.nan, 0.1]):  # gave [] and a cliff at 1 before
        with pytest.raises(ValueError, match="non-finite"):
            detect_cliffs(ev)


# ----------------------------------------------------------------------------- kernels
class Overflowing(nn.Module):
    """Finite logits (~1e20), but gradients ~1e20 whose squares overflow float32."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)
        with torch.no_grad():
            self.a.weight.fill_(0.5)
            self.a.bias.zero_()
            self.b.weight.fill_(1e20)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.fixture()
def x():
    return torch.rand(10, 3) + 0.1


@pytest.mark.parametrize("kind", ["trntk0", "trntk", "pntk"])
def test_non_finite_kernel_never_marked_complete(tmp_path, x, kind):
    path = tmp_path / "k.h5"
    with pytest.raises(NonFiniteKernelError) as err:
        kernels.compute_to_hdf5(path, Overflowing(), x, kind=kind, group="train_train", block_size=4,
                                progress=False)
    assert f"{path}:train_train" in str(err.value) and "block 0" in str(err.value)
    with h5py.File(path, "r") as f:
        assert not f["train_train"].attrs["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        store.read_kernel(path, "train_train")
    with pytest.raises(NonFiniteKernelError, match=f"kernel '{kind}'"):
        kernels.compute(Overflowing(), x, kind=kind)


def test_non_finite_cross_kernel_block(tmp_path, x):
    model = Overflowing()
    with torch.no_grad():
        model.b.weight.fill_(1e17)  # squares 1e34 fit in float32; sums over 4+ terms of x*y still do
    y = x.clone()
    y[7] *= 1e6  # sample 7 of y pushes its gradients over the edge
    with pytest.raises(NonFiniteKernelError, match=r"self-kernels of y, block 1 \(rows 4:8\)"):
        kernels.compute_to_hdf5(tmp_path / "k.h5", model, x, y, kind="trntk0", group="test_train",
                                block_size=4, progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused(tmp_path, x, dtype):
    model = nn.Linear(3, 2)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=f"dtype {name} is not supported.*float32"):
        kernels.compute(model, x, dtype=dtype)
    with pytest.raises(ValueError, match=f"dtype {name} is not supported"):
        kernels.compute_to_hdf5(tmp_path / "k.h5", model, x, kind="trntk", dtype=dtype, progress=False)
    assert not (tmp_path / "k.h5").exists()


def test_device_errors_name_the_device(tmp_path, x):
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="device 'meta' holds no values"):
        kernels.compute(model, x, device="meta")
    with pytest.raises(ValueError, match="device 'meta' holds no values"):
        kernels.compute_to_hdf5(tmp_path / "k.h5", model, x, kind="trntk", device="meta", progress=False)
    with pytest.raises(ValueError, match="device 'gpu0' is not a valid torch device"):
        kernels.compute(model, x, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
            kernels.compute(model, x, device="cuda")
        with pytest.raises(ValueError, match="device 'cuda:1' requested but CUDA is not available"):
            kernels.compute_to_hdf5(tmp_path / "k.h5", model, x, kind="trntk", device="cuda:1", progress=False)
    else:
        with pytest.raises(ValueError, match="device 'cuda:99' does not exist"):
            kernels.compute(model, x, device="cuda:99")
    with torch.device("meta"):
        ghost = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="parameters on the 'meta' device"):
        kernels.compute(ghost, x, device="cpu")


def test_non_finite_or_mismatched_inputs(x):
    model = nn.Linear(3, 2)
    bad = x.clone()
    bad[6, 1] = float("nan")
    with pytest.raises(ValueError, match="x: 1 of 10 samples hold non-finite values.*sample 6"):
        kernels.compute(model, bad)
    with pytest.raises(ValueError, match="y: 1 of 10 samples"):
        kernels.compute(model, x, bad)
    with pytest.raises(ValueError, match=r"different shapes: \(3,\) and \(4,\)"):
        kernels.compute(model, x, torch.rand(5, 4))
    with pytest.raises(ValueError, match="importance= must hold finite, non-negative"):
        kernels.compute(model, x, kind="trntk0", importance=[1.0, float("nan")])
    with pytest.raises(ValueError, match="importance= must hold finite, non-negative"):
        kernels.compute(model, x, kind="trntk0", importance=[1.0, -0.5])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        kernels.compute(model, x, batch_size=True)


# ----------------------------------------------------------------------------- store
def test_not_hdf5_kernel_paths_are_named(tmp_path, x):
    text = tmp_path / "trntk.h5"
    text.write_text("not a kernel\n")
    for call in (lambda: store.read_kernel(text, "train_train"), lambda: store.list_kernel_groups(text)):
        with pytest.raises(ValueError, match=f"{text} is not an HDF5 kernel file"):
            call()
    with pytest.raises(ValueError, match=f"{text} exists and is not an HDF5 kernel file"):
        kernels.compute_to_hdf5(text, nn.Linear(3, 2), x, kind="trntk", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        store.read_kernel(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="is not an HDF5 kernel file"):
        store.read_kernel(tmp_path)  # a directory
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_group("train_train").create_dataset("values", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.h5:train_train is not a kernel group .*no kernel, diag_x, diag_y"):
        store.read_kernel(other, "train_train")
    truncated = tmp_path / "truncated.h5"
    kernels.compute_to_hdf5(truncated, nn.Linear(3, 2), x, kind="trntk", progress=False)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises((ValueError, FileNotFoundError), match="truncated.h5"):
        store.read_kernel(truncated)


# ----------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_savez(tmp_path / "b.npz", a=np.zeros(2))
        with atomic_path(tmp_path / "c.csv") as tmp:
            pd.DataFrame({"a": [1]}).to_csv(tmp, index=False)
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.npz", "c.csv", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.npz", "c.csv", "plain.txt"]


def test_atomic_path_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_validate_config_does_not_mutate(default_config):
    before = copy.deepcopy(default_config)
    validate_config(default_config)
    assert default_config == before
