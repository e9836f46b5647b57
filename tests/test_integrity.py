"""Issue 25: every stored artifact verified on read; a damaged one is a clear error naming the
file, what is wrong and how to recompute it; `make verify` lists exactly the damaged files.

Damage is done to the bytes on disk, as bit-rot or a bad copy would do it, never through the
writing library (which would recompute the checksums)."""
import shutil
import zipfile

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from ntkbench import kernels, models, store
from ntkbench.data import load_bundle, load_dataset, save_bundle
from ntkbench.integrity import CorruptFileError, content_sha256, load_npz, load_torch, producing_rule, save_torch
from ntkbench.kinds import options_for
from ntkbench.stages import verify
from ntkbench.stages.common import InputError
from ntkbench.stages.kernels import kernel_stage
from ntkbench.stages.surrogates import kglm_stage
from ntkbench.stages.train import train_stage

OPTIONS = {"proj_dim": 32, "proj_type": "gaussian", "proj_seed": 0, "batch_size": 32, "block_size": 24,
           "em_layers": None, "dtype": "float32"}
KGLM = {"alpha": 1e-4, "seed": 0, "target": "labels", "class_weight": "balanced", "solver": "sgd"}
TRAIN = {"optimizer": "sgd", "lr": 1.0, "epochs": 8, "batch_size": 16, "allow_divergence": False}


def flip_byte(path, offset, mask=0x10):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))


def zip_member_offset(path, name_part):
    """Byte offset of the stored data of the first zip member whose name contains ``name_part``."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if name_part in i.filename and i.file_size > 16)
        assert info.compress_type == zipfile.ZIP_STORED
    raw = path.read_bytes()
    # local header: 30 bytes + name + extra field (lengths at 26 and 28)
    start = info.header_offset
    name_len = int.from_bytes(raw[start + 26:start + 28], "little")
    extra_len = int.from_bytes(raw[start + 28:start + 30], "little")
    return start + 30 + name_len + extra_len, info.file_size


def damage_zip_member(path, name_part):
    offset, size = zip_member_offset(path, name_part)
    flip_byte(path, offset + size - 3)  # inside the values, past any header


def damage_kernel_values(path, group="test_train"):
    with h5py.File(path, "r") as f:
        info = f[f"{group}/kernel"].id.get_chunk_info(0)
    flip_byte(path, info.byte_offset + 9, mask=0x01)  # a low mantissa bit: a plausible value


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """results/<exp>/ with data, three trained seeds, a trntk kernel and a kGLM fit each."""
    root = tmp_path_factory.mktemp("results")
    exp = root / "toy"
    torch.set_num_threads(1)
    bundle = load_dataset({"name": "digits", "classes": [0, 1, 2], "max_train": 48, "max_test": 24})
    save_bundle(bundle, exp / "data.npz")
    for seed in range(3):
        run = exp / f"seed{seed}"
        (run / "kernels").mkdir(parents=True)
        train_stage(exp / "data.npz", {"name": "mlp", "hidden": [12]}, TRAIN, seed=seed, device="cpu",
                    out_model=run / "model.pt", out_logits=run / "logits.npz", out_history=run / "training.csv")
        kernel_stage(exp / "data.npz", run / "model.pt", "trntk", options_for("trntk", OPTIONS), 24, "cpu",
                     run / "kernels" / "trntk.h5", logits_path=run / "logits.npz")
        kglm_stage(exp / "data.npz", run / "logits.npz", run / "model.pt", run / "kernels" / "trntk.h5", "trntk",
                   options_for("trntk", OPTIONS), KGLM, run / "kglm" / "trntk.json", run / "kglm" / "trntk.npz")
    return root


@pytest.fixture()
def results(experiment, tmp_path):
    """A fresh copy of the intact tree, for a test to damage."""
    dst = tmp_path / "results"
    shutil.copytree(experiment, dst)
    return dst


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_with_flipped_weight_bytes_is_refused_naming_the_file(results):
    path = results / "toy/seed0/model.pt"
    models.load_checkpoint(path)  # intact: loads
    damage_zip_member(path, "/data/0")  # a tensor's bytes: torch's zip reader does not check CRCs
    with pytest.raises(CorruptFileError) as err:
        models.load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "does not match its checksum" in message
    assert f"rm '{path}'" in message and "--forcerun train" in message


def test_truncated_checkpoint_is_named(results):
    path = results / "toy/seed0/model.pt"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match="not a readable model checkpoint") as err:
        models.load_checkpoint(path)
    assert str(path) in str(err.value) and "200 bytes" in str(err.value)


def test_checkpoint_without_checksum_is_refused(tmp_path):
    model = nn.Linear(3, 2)
    torch.save({"spec": {"name": "logreg"}, "state_dict": model.state_dict()}, tmp_path / "old.pt")
    with pytest.raises(CorruptFileError, match="carries no content checksum"):
        models.load_checkpoint(tmp_path / "old.pt")


def test_checksum_covers_spec_and_extras(tmp_path):
    save_torch(tmp_path / "c.pt", {"spec": {"name": "x", "width": 3}, "w": torch.arange(4.0), "seed": 1})
    obj = torch.load(tmp_path / "c.pt", weights_only=True)
    obj["seed"] = 2  # a valid file whose content was changed by hand
    torch.save(obj, tmp_path / "c.pt")
    with pytest.raises(CorruptFileError, match="does not match its checksum"):
        load_torch(tmp_path / "c.pt")


def test_content_hash_is_canonical():
    a = {"b": [1, 2.0, "x"], "a": torch.ones(2, 3), "c": np.arange(3)}
    b = {"c": np.arange(3), "a": torch.ones(2, 3), "b": (1, 2.0, "x")}
    assert content_sha256(a) == content_sha256(b)
    assert content_sha256(a) != content_sha256({**a, "a": torch.ones(3, 2)})  # shape matters
    assert content_sha256(a) != content_sha256({**a, "a": torch.ones(2, 3, dtype=torch.float64)})  # dtype too
    assert content_sha256({"x": 1}) != content_sha256({"x": True}) != content_sha256({"x": "1"})


# ----------------------------------------------------------------------------- npz and kernels
def test_npz_with_flipped_bytes_names_file_and_member(results):
    path = results / "toy/data.npz"
    damage_zip_member(path, "train_x")
    with pytest.raises(CorruptFileError) as err:
        load_bundle(path)
    assert str(path) in str(err.value) and "train_x.npy" in str(err.value) and "CRC" in str(err.value)
    assert "--forcerun prepare_data" in str(err.value)


def test_logits_with_flipped_bytes_stop_the_kglm_stage(results):
    run = results / "toy/seed0"
    damage_zip_member(run / "logits.npz", "train_logits")
    with pytest.raises(CorruptFileError, match="logits.npz") as err:
        kglm_stage(results / "toy/data.npz", run / "logits.npz", run / "model.pt", run / "kernels/trntk.h5", "trntk",
                   options_for("trntk", OPTIONS), KGLM, run / "k.json", run / "k.npz")
    assert str(run / "logits.npz") in str(err.value)
    assert not (run / "k.json").exists()


def test_kernel_with_a_changed_value_is_refused(results):
    run = results / "toy/seed0"
    path = run / "kernels/trntk.h5"
    damage_kernel_values(path)
    with pytest.raises(CorruptFileError) as err:
        kglm_stage(results / "toy/data.npz", run / "logits.npz", run / "model.pt", path, "trntk",
                   options_for("trntk", OPTIONS), KGLM, run / "k.json", run / "k.npz")
    assert str(path) in str(err.value) and "fletcher32" in str(err.value) and "/test_train/kernel" in str(err.value)
    with pytest.raises(CorruptFileError):
        store.read_kernel(path, "test_train")


def test_kernel_datasets_carry_checksums(results):
    with h5py.File(results / "toy/seed0/kernels/trntk.h5", "r") as f:
        for group in ("train_train", "test_train"):
            assert all(f[group][name].fletcher32 for name in ("kernel", "diag_x", "diag_y"))


def test_kernel_file_without_checksums_is_refused_and_not_resumed(results, tmp_path):
    """A kernel written before checksums (simulated: the filter stripped by h5py copy) is refused
    by a reading stage, and a partial one is not resumed."""
    run = results / "toy/seed0"
    path = run / "kernels/trntk.h5"
    with h5py.File(path, "r") as src, h5py.File(tmp_path / "plain.h5", "w") as dst:
        for group in src:
            g = dst.create_group(group)
            g.attrs.update(src[group].attrs)
            for name, ds in src[group].items():
                g.create_dataset(name, data=ds[...])
    shutil.copy(tmp_path / "plain.h5", path)
    with pytest.raises(CorruptFileError, match="carry no fletcher32 checksums"):
        kglm_stage(results / "toy/data.npz", run / "logits.npz", run / "model.pt", path, "trntk",
                   options_for("trntk", OPTIONS), KGLM, run / "k.json", run / "k.npz")
    with h5py.File(tmp_path / "plain.h5", "a") as f:
        f["train_train"].attrs["complete"] = False
    x = load_bundle(results / "toy/data.npz").train.x
    model, _ = models.load_checkpoint(run / "model.pt")
    with pytest.raises(store.IncompatibleKernelFile, match="no fletcher32"):
        kernels.compute_to_hdf5(tmp_path / "plain.h5", model, x, None, kind="trntk", group="train_train", block_size=24)


# ----------------------------------------------------------------------------- model vs logits
def test_a_swapped_model_does_not_reproduce_its_logits(results):
    """Both files intact, but model.pt is another seed's network: stages refuse the pair."""
    run = results / "toy/seed0"
    shutil.copy(results / "toy/seed1/model.pt", run / "model.pt")
    with pytest.raises(InputError, match="does not reproduce its logits") as err:
        kernel_stage(results / "toy/data.npz", run / "model.pt", "trntk", options_for("trntk", OPTIONS), 24, "cpu",
                     run / "kernels/new.h5", logits_path=run / "logits.npz")
    assert str(run / "model.pt") in str(err.value) and str(run / "logits.npz") in str(err.value)
    with pytest.raises(InputError, match="does not reproduce its logits"):
        kglm_stage(results / "toy/data.npz", run / "logits.npz", run / "model.pt", run / "kernels/trntk.h5", "trntk",
                   options_for("trntk", OPTIONS), KGLM, run / "k.json", run / "k.npz")


# ----------------------------------------------------------------------------- make verify
def test_verify_passes_an_intact_tree(experiment, capsys):
    checked, findings = verify.verify_results(experiment)
    assert findings == [] and checked == 1 + 3 * 6  # data + per seed: model, logits, history, kernel, kGLM json+npz
    assert verify.main([str(experiment)]) == 0
    assert "all intact" in capsys.readouterr().out


def test_verify_lists_exactly_the_damaged_files(results, capsys):
    toy = results / "toy"
    damaged = {
        toy / "seed0/model.pt",                # flipped weight bytes (checksum)
        toy / "seed1/kernels/trntk.h5",        # a changed kernel value (fletcher32)
        toy / "seed1/logits.npz",              # flipped bytes (zip CRC)
        toy / "seed2/kernels/trntk.h5",        # another network's kernel (provenance)
        toy / "seed2/kglm/trntk.json",         # truncated report
    }
    shutil.copy(toy / "seed1/kernels/trntk.h5", toy / "seed2/kernels/trntk.h5")
    damage_zip_member(toy / "seed0/model.pt", "/data/0")
    damage_kernel_values(toy / "seed1/kernels/trntk.h5")
    damage_zip_member(toy / "seed1/logits.npz", "test_logits")
    text = (toy / "seed2/kglm/trntk.json").read_text()
    (toy / "seed2/kglm/trntk.json").write_text(text[: len(text) // 2])
    (toy / "seed2/kernels/other.h5.partial").write_bytes(b"")  # unfinished: reported, not damaged data
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}

    checked, findings = verify.verify_results(results)
    found = {f.path for f in findings if not f.path.name.endswith(".partial")}
    assert found == damaged
    assert [f.path.name for f in findings if f.path.name.endswith(".partial")] == ["other.h5.partial"]
    by_path = {f.path: f for f in findings}
    assert "checksum" in by_path[toy / "seed0/model.pt"].problem
    assert "fletcher32" in by_path[toy / "seed1/kernels/trntk.h5"].problem
    assert "another network" in by_path[toy / "seed2/kernels/trntk.h5"].problem
    assert "--forcerun kglm" in by_path[toy / "seed2/kglm/trntk.json"].remedy

    assert verify.main([str(results)]) == 1
    out = capsys.readouterr().out
    assert out.count("DAMAGED") == len(damaged) + 1 and "nothing was deleted" in out
    assert before == {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}  # read-only


def test_verify_flags_logits_of_another_network(results):
    toy = results / "toy"
    shutil.copy(toy / "seed1/logits.npz", toy / "seed0/logits.npz")
    findings = verify.verify_results(results)[1]
    assert [f.path for f in findings] == [toy / "seed0/logits.npz"]
    assert "not the logits of the network" in findings[0].problem


def test_producing_rules():
    assert producing_rule("results/a/seed0/model.pt") == "train"
    assert producing_rule("results/a/data.npz") == "prepare_data"
    assert producing_rule("results/a/seed3/kglm/trntk@exact.npz") == "kglm_variant"
    assert producing_rule("results/a/seed3/kglm/trntk.json") == "kglm"
    assert producing_rule("results/a/seed3/kernels/proj-pntk.h5").startswith("kernel")
    assert producing_rule("somewhere/else.txt") is None


def test_load_npz_reads_every_member(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(1000.0), y=np.ones(5))
    assert set(load_npz(tmp_path / "a.npz")) == {"x", "y"}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "b.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CorruptFileError, match=str(tmp_path / "b.npz")):
        load_npz(tmp_path / "b.npz")
