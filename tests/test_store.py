"""HDF5 streaming of kernels: values, provenance, resume after interruption, refusal."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from ntkbench import kernels, store
from ntkbench.kernels import streaming
from ntkbench.kernels.fast import GradientEngine
from tests.kernel_models import MLP, TokenNet, ViewCNN

F64 = torch.float64


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    return MLP(), torch.randn(11, 6), torch.randn(7, 6)


@pytest.mark.parametrize("kind", ["trntk", "entk", "proj-trntk"])
def test_hdf5_conv_blocks_match_generic(tmp_path, kind):
    """Streamed blocks of materialised (class-major, packed) conv gradients equal the torch.func path."""
    torch.manual_seed(0)
    model, x, y = ViewCNN(), torch.randn(9, 2, 8, 8), torch.randn(5, 2, 8, 8)
    opts = dict(dtype=F64, proj_dim=24, seed=2) if kind.startswith("proj") else dict(dtype=F64)
    path = tmp_path / "k.h5"
    kernels.compute_to_hdf5(path, model, y, x, kind=kind, group="test_train", block_size=4, batch_size=3,
                            progress=False, **opts)
    want = kernels.compute(model, y, x, kind=kind, impl="generic", **opts).numpy()
    np.testing.assert_allclose(store.read_kernel(path, "test_train").kernel, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["trntk", "entk"])
def test_hdf5_blocks_in_batches(tmp_path, monkeypatch, kind):
    """A block's representations in several batches (STREAM_BATCH below the block size):
    diagonal blocks contracted as their upper triangle and mirrored, off-diagonal blocks batch
    pair by batch pair, a single block's representations reused from the diagonal pass (not
    computed again): the kernels equal torch.func's."""
    monkeypatch.setattr(streaming, "STREAM_BATCH", 3)
    torch.manual_seed(0)
    model, x, y = ViewCNN(), torch.randn(11, 2, 8, 8), torch.randn(5, 2, 8, 8)
    calls = {"n": 0}
    real = GradientEngine.reps

    def counting(self, xb):
        calls["n"] += 1
        return real(self, xb)

    monkeypatch.setattr(GradientEngine, "reps", counting)
    # (y, block size, batches computed): 8-row blocks: diagonals (rows 0-2, 3-5, 6-7 | 8-10),
    # row block 0 again, block 1 as columns and as rows; one 16-row block: the diagonal
    # pass's 4 batches, kept for the kernel pass.
    for other, block, expected in ((None, 8, 4 + 3 + 1 + 1), (None, 16, 4), (y, 8, None)):
        group = "train_train" if other is None else "train_test"
        path = tmp_path / f"{group}_{block}.h5"
        calls["n"] = 0
        kernels.compute_to_hdf5(path, model, x, other, kind=kind, group=group, block_size=block, progress=False,
                                dtype=F64)
        if expected is not None:
            assert calls["n"] == expected
        want = kernels.compute(model, x, other, kind=kind, impl="generic", dtype=F64).numpy()
        got = store.read_kernel(path, group).kernel
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["trntk", "entk", "pntk0", "proj-pntk", "em"])
def test_hdf5_matches_in_memory(tmp_path, setup, kind):
    model, x, y = setup
    path = tmp_path / "k.h5"
    opts = dict(dtype=F64, proj_dim=32, seed=5) if kind.startswith("proj") else dict(dtype=F64)
    kernels.compute_to_hdf5(path, model, x, kind=kind, group="train_train", block_size=4, progress=False, **opts)
    kernels.compute_to_hdf5(path, model, y, x, kind=kind, group="test_train", block_size=3, attrs={"split": "test"}, **opts)
    assert sorted(store.list_kernel_groups(path)) == ["test_train", "train_train"]
    tt = store.read_kernel(path, "train_train")
    np.testing.assert_allclose(tt.kernel, kernels.compute(model, x, kind=kind, **opts).numpy(), rtol=1e-10, atol=1e-12)
    te = store.read_kernel(path, "test_train")
    np.testing.assert_allclose(te.kernel, kernels.compute(model, y, x, kind=kind, **opts).numpy(), rtol=1e-10, atol=1e-12)
    assert te.kernel.shape[:2] == (7, 11)
    assert te.attrs["split"] == "test"
    if kind in kernels.NORMALISED_KINDS:
        np.testing.assert_array_equal(np.diagonal(tt.kernel), np.ones(11))
    # unnormalised self-kernels are stored beside the kernel
    k0_kind = {"trntk": "trntk0", "entk": "entk", "pntk0": "pntk0"}.get(kind)
    if k0_kind:
        k0 = kernels.compute(model, x, kind=k0_kind, dtype=F64).numpy()
        diag = np.einsum("ii...->i...", k0)
        np.testing.assert_allclose(tt.diag_x, diag, rtol=1e-10)
        np.testing.assert_allclose(te.diag_y, diag, rtol=1e-10)


def test_provenance_attributes(tmp_path, setup):
    model, x, _ = setup
    path = tmp_path / "k.h5"
    kernels.compute_to_hdf5(path, model, x, kind="trntk", block_size=5, progress=False)
    rec = store.read_kernel(path, "kernel")
    a = rec.attrs
    assert a["kind"] == "trntk" and a["complete"] is True
    assert a["options"]["dtype"] == "float32" and a["options"]["kind"] == "trntk"
    assert a["model_fingerprint"] == store.model_fingerprint(model)
    assert a["data_fingerprint_x"] == store.tensor_fingerprint(x)
    assert a["torch_version"] == torch.__version__ and a["ntkbench_version"]
    assert "created" in a and a["block_size"] == 5


def test_resume_after_interruption(tmp_path, setup, monkeypatch, caplog):
    model, x, y = setup
    ref_path = tmp_path / "ref.h5"
    kernels.compute_to_hdf5(ref_path, model, x, y, kind="trntk", block_size=3, progress=False)
    ref = store.read_kernel(ref_path, "kernel").kernel

    path = tmp_path / "partial.h5"
    calls = {"n": 0}
    real = streaming.block_kernel

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kw)

    monkeypatch.setattr(streaming, "block_kernel", flaky)
    with pytest.raises(KeyboardInterrupt):
        kernels.compute_to_hdf5(path, model, x, y, kind="trntk", block_size=3, progress=False)
    with h5py.File(path, "r") as f:
        assert f["kernel/blocks_done"][...].sum() == 4
        assert not f["kernel"].attrs["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        store.read_kernel(path, "kernel")

    counted = {"n": 0}

    def counting(*args, **kw):
        counted["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(streaming, "block_kernel", counting)
    kernels.compute_to_hdf5(path, model, x, y, kind="trntk", block_size=3, batch_size=2, progress=False)
    assert counted["n"] == 4 * 3 - 4  # only the unfinished blocks were computed
    np.testing.assert_array_equal(store.read_kernel(path, "kernel").kernel, ref)


def test_resume_symmetric_interrupted(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model, x = TokenNet(), torch.randint(0, 11, (10, 5))
    real = streaming.block_kernel
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("boom")
        return real(*args, **kw)

    path = tmp_path / "k.h5"
    monkeypatch.setattr(streaming, "block_kernel", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        kernels.compute_to_hdf5(path, model, x, kind="entk", block_size=3, progress=False, dtype=F64)
    monkeypatch.setattr(streaming, "block_kernel", real)
    kernels.compute_to_hdf5(path, model, x, kind="entk", block_size=3, progress=False, dtype=F64)
    got = store.read_kernel(path, "kernel").kernel
    np.testing.assert_allclose(got, kernels.compute(model, x, kind="entk", dtype=F64).numpy(), rtol=1e-10, atol=1e-12)


def test_refuses_to_resume_with_different_settings(tmp_path, setup):
    model, x, y = setup
    path = tmp_path / "k.h5"
    kernels.compute_to_hdf5(path, model, x, kind="proj-trntk", proj_dim=16, block_size=4, progress=False)
    with pytest.raises(store.IncompatibleKernelFile, match="identity_options"):
        kernels.compute_to_hdf5(path, model, x, kind="proj-trntk", proj_dim=32, block_size=4, progress=False)
    with pytest.raises(store.IncompatibleKernelFile, match="kind"):
        kernels.compute_to_hdf5(path, model, x, kind="trntk", block_size=4, progress=False)
    other = MLP()
    with pytest.raises(store.IncompatibleKernelFile, match="model_fingerprint"):
        kernels.compute_to_hdf5(path, other, x, kind="proj-trntk", proj_dim=16, block_size=4, progress=False)
    with pytest.raises(store.IncompatibleKernelFile, match="data_fingerprint_x"):
        kernels.compute_to_hdf5(path, model, x + 1, kind="proj-trntk", proj_dim=16, block_size=4, progress=False)
    # same settings (batch size may differ): accepted, already complete
    kernels.compute_to_hdf5(path, model, x, kind="proj-trntk", proj_dim=16, block_size=4, batch_size=3, progress=False)


def test_progress_is_logged(tmp_path, setup, caplog):
    model, x, _ = setup
    with caplog.at_level("INFO", logger="ntkbench.kernels.streaming"):
        kernels.compute_to_hdf5(tmp_path / "k.h5", model, x, kind="trntk", block_size=4, progress=True)
    assert any("blocks 9/9" in r.getMessage() for r in caplog.records)


def test_fingerprints_change_with_content(setup):
    model, x, _ = setup
    fp = store.model_fingerprint(model)
    with torch.no_grad():
        model.net[0].weight[0, 0] += 1
    assert store.model_fingerprint(model) != fp
    assert store.tensor_fingerprint(x) != store.tensor_fingerprint(x.double())


def test_feature_cache_budget_changes_work_not_values(tmp_path, setup, monkeypatch):
    """feature_cache_mb=0 (memory bounded by the block size alone) recomputes column blocks'
    features per row block and gives the same file values as the default cache."""
    model, x, y = setup
    calls = []
    make_source = streaming.make_source

    def counting(*args, **kwargs):
        source = make_source(*args, **kwargs)
        reps = source.reps
        source.reps = lambda data: calls.append(len(data)) or reps(data)
        return source

    monkeypatch.setattr(streaming, "make_source", counting)
    values = {}
    for budget in (None, 0):
        calls.clear()
        path = tmp_path / f"k{budget}.h5"
        kernels.compute_to_hdf5(path, model, y, x, kind="trntk", group="test_train", block_size=3, dtype=F64,
                                progress=False, feature_cache_mb=budget)
        values[budget] = (store.read_kernel(path, "test_train").kernel, sum(calls))
    np.testing.assert_array_equal(values[0][0], values[None][0])
    # 11 x-samples in 4 column blocks, 7 y-samples in 3 row blocks: the cached run computes each
    # column block once, the uncached one once per row block (plus the diagonal passes in both)
    assert values[0][1] - values[None][1] == 2 * 11
    with pytest.raises(ValueError, match="feature_cache_mb"):
        kernels.compute_to_hdf5(tmp_path / "bad.h5", model, x, kind="trntk", feature_cache_mb=-1, progress=False)
