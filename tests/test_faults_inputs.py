"""Fault cases of issue 25 (parts 3 and 4) at the inputs: data files and config files. Each ends
in an error naming the file or key and what is wrong, or in a correct result with a log line
that says what was done; never in a silent guess."""
import gzip
import logging
import math
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import ntkbench.config as config_module
from ntkbench.config import ConfigError, load_config, validate_config
from ntkbench.data import load_dataset
from ntkbench.data.images import load_mnist, read_idx
from tests.idx_files import idx_bytes, write_idx_set

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def default_config():
    with open(REPO / "config.yaml") as fh:
        return yaml.safe_load(fh)


def _error(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    return str(err.value)


# ----------------------------------------------------------------------------- IDX header
def test_idx_header_byte_count_never_overflows(tmp_path):
    # Three dimensions of 2**31 - 1 float64 values: ~8e28 bytes, far past int64, so a numpy
    # product wraps around; the message must give the true count.
    dims = (0x7FFFFFFF,) * 3
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 0x0E, 3]) + b"".join(struct.pack(">I", n) for n in dims) + bytes(16))
    with pytest.raises(ValueError) as err:
        read_idx(path)
    message = str(err.value)
    assert str(path) in message
    assert f"{math.prod(dims) * 8:,}" in message and "16 bytes" in message
    assert "(-" not in message


def test_idx_with_a_wrong_ndim_byte_names_the_file_and_sizes(tmp_path):
    # A labels file (ndim 1) whose magic number says ndim 3: the first label bytes are read as
    # two more sizes, whose product wraps int64 to a negative byte count in numpy.
    labels = np.array([5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5, 3, 6, 1, 7] * 625, dtype=np.uint8)
    raw = bytearray(idx_bytes(labels))
    raw[3] = 3
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(bytes(raw))
    dims = (10000, 0x05000401, 0x09020103)
    with pytest.raises(ValueError) as err:
        read_idx(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "ndim" in message.removeprefix(str(path))
    assert f"{math.prod(dims):,} values" in message
    assert not re.search(r"-\d", message.removeprefix(str(path))), message


def test_idx_dimension_with_the_sign_bit_set_is_refused(tmp_path):
    path = tmp_path / "negative"
    path.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 0xFFFFFFF0) + bytes(16))
    with pytest.raises(ValueError, match=r"negative.*dimension 0 .*4294967280"):
        read_idx(path)


def test_idx_with_zero_dimensions_is_refused(tmp_path):
    path = tmp_path / "scalar"
    path.write_bytes(bytes([0, 0, 0x08, 0, 7]))
    with pytest.raises(ValueError, match=r"scalar: .*ndim 0"):
        read_idx(path)


def test_idx_unknown_dtype_code_is_named(tmp_path):
    path = tmp_path / "odd"
    path.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 2) + bytes(2))
    with pytest.raises(ValueError, match=r"odd: .*data type code 0x07"):
        read_idx(path)


# ----------------------------------------------------------------------------- gzip without .gz
def test_gzip_without_gz_suffix_is_read_and_said(tmp_path, caplog):
    arr = np.array([[1, 2, 3], [4, 5, 255]], dtype=np.uint8)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(idx_bytes(arr)))
    with caplog.at_level(logging.INFO, logger="ntkbench.data.images"):
        np.testing.assert_array_equal(read_idx(path), arr)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(str(path) in m and "gzip-compressed but has no .gz suffix" in m for m in said), said


def test_corrupt_gzip_without_gz_suffix_names_the_file(tmp_path):
    arr = np.zeros((4, 28, 28), dtype=np.uint8)
    data = gzip.compress(idx_bytes(arr))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte is gzip-compressed but has no \.gz suffix.*corrupt"):
        read_idx(path)


def test_mnist_folder_of_gzipped_files_without_suffix_loads(tmp_path, caplog):
    images, _ = write_idx_set(tmp_path / "src", gz=True)
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for gz in (tmp_path / "src").glob("*.gz"):
        shutil.copy(gz, folder / gz.stem)  # gzip data under the raw names
    with caplog.at_level(logging.INFO, logger="ntkbench.data.images"):
        bundle = load_mnist(tmp_path / "data")
    np.testing.assert_allclose(bundle.train.x[:, 0].numpy(), images["train"] / 255.0, atol=1e-7)
    assert sum("no .gz suffix" in r.getMessage() for r in caplog.records) == 4


def test_plain_file_with_gz_suffix_says_so(tmp_path):
    path = tmp_path / "plain.gz"
    path.write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"plain\.gz: cannot decompress.*not gzip-compressed.*raw IDX"):
        read_idx(path)


# ----------------------------------------------------------------------------- raw and .gz both present
def test_raw_and_gz_with_equal_contents_use_one_and_say_which(tmp_path, caplog):
    images, _ = write_idx_set(tmp_path / "mnist", gz=True)
    write_idx_set(tmp_path / "mnist", gz=False)
    with caplog.at_level(logging.INFO, logger="ntkbench.data.images"):
        bundle = load_mnist(tmp_path)
    np.testing.assert_allclose(bundle.train.x[:, 0].numpy(), images["train"] / 255.0, atol=1e-7)
    said = [r.getMessage() for r in caplog.records if "same" in r.getMessage()]
    raw = tmp_path / "mnist" / "train-images-idx3-ubyte"
    assert any(f"{raw} and {raw}.gz" in m and f"reading {raw}" in m for m in said), said
    assert len(said) == 4


def test_raw_and_gz_with_different_contents_are_refused(tmp_path):
    write_idx_set(tmp_path / "mnist", gz=True)
    write_idx_set(tmp_path / "mnist", n_train=7, gz=False)  # another training set
    raw = tmp_path / "mnist" / "train-images-idx3-ubyte"
    with pytest.raises(ValueError) as err:
        load_mnist(tmp_path)
    message = str(err.value)
    assert str(raw) in message and f"{raw}.gz" in message and "differ" in message


# ----------------------------------------------------------------------------- requested counts
def test_digits_max_train_beyond_the_data_warns_and_records_counts(caplog):
    with caplog.at_level(logging.WARNING, logger="ntkbench.data.digits"):
        bundle = load_dataset({"name": "digits", "classes": [0, 1], "max_train": 5000, "max_test": 20})
    n_train = len(bundle.train)
    assert n_train < 5000 and len(bundle.test) == 20
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("data.max_train" in m and "5000" in m and str(n_train) in m for m in warned), warned
    assert not any("max_test" in m for m in warned)
    assert bundle.meta["n_train"] == n_train and bundle.meta["n_test"] == 20


def test_image_loaders_record_counts_and_refuse_a_larger_max_train(tmp_path):
    write_idx_set(tmp_path / "mnist", gz=True)
    bundle = load_dataset({"name": "mnist", "max_train": 4}, data_dir=tmp_path)
    assert bundle.meta["n_train"] == 4 and bundle.meta["n_test"] == 4
    with pytest.raises(ValueError, match=r"data\.max_train: asked for 9 images but only 6"):
        load_dataset({"name": "mnist", "max_train": 9}, data_dir=tmp_path)


# ----------------------------------------------------------------------------- config: memory of proj_dim
def test_huge_proj_dim_is_refused_naming_key_bytes_and_budget(default_config):
    default_config["kernel_options"]["proj_dim"] = 10**12
    message = _error(default_config)
    assert "kernel_options.proj_dim" in message and "resources.kernels.mem_mb" in message
    # digits10-mlp: 10 logits; at least floor(174 * 0.7) - 1 = 120 training images per class.
    need = 1200 * 10 * 10**12 * 4
    assert f"{need:,} bytes" in message, message


def test_proj_dim_within_a_raised_budget_passes(default_config):
    default_config["kernel_options"]["proj_dim"] = 200_000  # 1200 x 10 x 2e5 x 4 B = 9.6 GB
    assert "kernel_options.proj_dim" in _error(default_config)
    default_config.setdefault("resources", {})["kernels"] = {"mem_mb": 16000}
    validate_config(default_config)


def test_memory_check_uses_the_configured_sizes(default_config):
    # One block of max_train rows (exact for MNIST) x 1 output (binary) x K x 8 bytes (float64).
    cfg = {"experiments": {"m2": {"data": {"name": "mnist", "classes": [3, 7], "max_train": 3000},
                                  "model": {"name": "mlp", "hidden": [8]}, "train": {},
                                  "kernels": ["proj-trntk"]}},
           "kernel_options": {"proj_dim": 10**6, "block_size": 2048, "dtype": "float64"},
           "resources": {"kernels": {"mem_mb": 1000}}}
    message = _error(cfg)
    assert f"{2048 * 10**6 * 8:,} bytes" in message and "'m2'" in message
    cfg["kernel_options"]["proj_type"] = "kronecker"  # features capped by the parameter count
    validate_config(cfg)


def test_float_proj_dim_is_not_an_integer(default_config):
    default_config["kernel_options"]["proj_dim"] = 1.0e12
    message = _error(default_config)
    assert "kernel_options.proj_dim" in message and "not an integer" in message


def test_proj_dim_written_1e12_in_yaml_is_refused(tmp_path, default_config):
    # YAML 1.1 reads 1e12 as a string and 1.0e+12 as a float; neither is an integer.
    for text in ("1e12", "1.0e+12"):
        default_config["kernel_options"]["proj_dim"] = "@"
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(default_config).replace("'@'", text))
        with pytest.raises(ConfigError, match="kernel_options.proj_dim"):
            load_config(path)


# ----------------------------------------------------------------------------- config: duplicate keys
DUPLICATE = """\
seeds: [0]
experiments:
  a:
    data: {name: digits}
    model: {name: mlp, hidden: [8]}
    train: {epochs: 1}
    kernels: [trntk]
kernel_options:
  proj_dim: 64
  block_size: 64
  proj_dim: 128
"""


def test_duplicate_key_is_refused_naming_key_file_and_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATE)
    with pytest.raises(ConfigError) as err:
        config_module.check_config_files([path])
    message = str(err.value)
    assert f"{path}:11" in message and "'proj_dim'" in message and "line 9" in message
    with pytest.raises(ConfigError, match=r"dup\.yaml:11: duplicate key 'proj_dim'"):
        load_config(path)
    (tmp_path / "ok.yaml").write_text(DUPLICATE.replace("  proj_dim: 128\n", ""))
    config_module.check_config_files([tmp_path / "ok.yaml"])
    assert load_config(tmp_path / "ok.yaml")["kernel_options"]["proj_dim"] == 64


def test_duplicate_top_level_key_and_merge_keys(tmp_path):
    path = tmp_path / "top.yaml"
    path.write_text("seeds: [0]\ndevice: cpu\nseeds: [1]\n")
    with pytest.raises(ConfigError, match=r"top\.yaml:3: duplicate key 'seeds' \(first at line 1\)"):
        config_module.check_config_files([str(path)])
    # A merge key (<<) may be overridden: that is YAML's meaning, not a duplicate.
    merged = tmp_path / "merge.yaml"
    merged.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    config_module.check_config_files([merged])
    assert config_module.load_yaml(merged)["other"] == {"x": 3, "y": 2}


def test_every_shipped_config_has_unique_keys():
    files = [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml")),
             *sorted((REPO / "tests" / "configs").glob("*.yaml"))]
    config_module.check_config_files(files)


@pytest.mark.slow
def test_snakemake_refuses_a_config_file_with_a_duplicate_key(tmp_path):
    for name in ("Snakefile", "rules", "workflow_scripts", "profiles", "ntkbench", "report", "config.yaml"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text.replace("kglm:\n", "kglm:\n  alpha: 1.0\n", 1))
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([str(snakemake), "-n", "--cores", "1", "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "duplicate key 'alpha'" in out and "config.yaml" in out, out[-3000:]


@pytest.mark.parametrize("data, key", [
    ({"name": "digits", "per_class_train": 5}, "per_class_train"),
    ({"name": "digits", "per_class_test": 5}, "per_class_test"),
    ({"name": "mnist", "test_fraction": 0.2}, "test_fraction"),
    ({"name": "cifar10", "test_fraction": 0.2}, "test_fraction"),
])
def test_data_keys_a_loader_does_not_take_are_refused_at_validation(default_config, data, key):
    """Before: validated, then a TypeError or ValueError in the data job."""
    default_config["experiments"]["digits2-mlp"]["data"] = data
    with pytest.raises(ConfigError, match=rf"experiments\.digits2-mlp\.data\.{key}: does not apply to this data set"):
        validate_config(default_config)
