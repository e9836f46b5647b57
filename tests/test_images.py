"""Real image data readers on tiny files written in the real formats, and the Shan et al. CNN."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from ntkbench.data import load_dataset
from ntkbench.data.images import load_cifar10, load_fmnist, load_mnist, read_idx
from tests.idx_files import idx_bytes, write_idx_set


def test_read_idx_raw_and_gz(tmp_path):
    arr = np.array([[1, 2, 3], [4, 5, 255]], dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    with gzip.open(tmp_path / "a.gz", "wb") as fh:
        fh.write(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(arr)[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_mnist_gz_in_mnist_folder(tmp_path):
    images, labels = write_idx_set(tmp_path / "mnist", gz=True)
    bundle = load_mnist(tmp_path)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    np.testing.assert_allclose(bundle.train.x[:, 0].numpy(), images["train"] / 255.0, atol=1e-7)
    assert bundle.train.y.tolist() == [0, 1, 2, 0, 1, 2] and bundle.test.y.tolist() == [0, 1, 2, 0]
    assert float(bundle.test.x.max()) <= 1.0


def test_fmnist_raw_torchvision_layout_classes_and_subset(tmp_path):
    write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=False)
    # Classes [2, 1] are relabelled 0, 1 in that order; training labels 0,1,2,0,1,2 -> keep 4.
    bundle = load_fmnist(tmp_path, classes=[2, 1])
    assert bundle.num_classes == 2 and bundle.train.y.tolist() == [1, 0, 1, 0]
    sub = load_dataset({"name": "fmnist", "max_train": 3, "max_test": 2, "split_seed": 1}, data_dir=tmp_path)
    assert len(sub.train) == 3 and len(sub.test) == 2


def test_missing_mnist_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found.*yann\.lecun"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset({"name": "mnist", "test_fraction": 0.3}, data_dir=tmp_path)


def _write_cifar(root, per_batch=2):
    root.mkdir(parents=True)
    # Each image is constant per channel: red = 10·k, green = 20, blue = 30 (k = image number),
    # stored the CIFAR way as 1024 red, 1024 green, 1024 blue bytes per row.
    k = 0
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows, labels = [], []
        for _ in range(per_batch):
            rows.append(np.concatenate([np.full(1024, 10 * k), np.full(1024, 20), np.full(1024, 30)]))
            labels.append(k % 10)
            k += 1
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": np.array(rows, dtype=np.uint8), b"labels": labels,
                         b"batch_label": name.encode()}, fh)


def test_cifar10_batches_channel_order(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    bundle = load_cifar10(tmp_path)
    assert len(bundle.train) == 10 and len(bundle.test) == 2 and bundle.input_shape == (3, 32, 32)
    x = bundle.train.x.numpy()
    np.testing.assert_allclose(x[3, 0], 30 / 255.0, atol=1e-7)   # red of image 3 = 10·3
    np.testing.assert_allclose(x[3, 1], 20 / 255.0, atol=1e-7)
    np.testing.assert_allclose(x[3, 2], 30 / 255.0, atol=1e-7)
    assert bundle.train.y.tolist() == list(range(10)) and bundle.test.y.tolist() == [0, 1]
    # Poisoning the RGB images with a yellow square goes through load_dataset.
    poisoned = load_dataset({"name": "cifar10", "poison": {"fraction": 0.2, "target": 4, "size": 3,
                                                           "colour": [1, 1, 0], "corner": "bottom-right"}},
                            data_dir=tmp_path)
    idx = poisoned.extra["poisoned_train_idx"]
    assert len(idx) == 2 and torch.all(poisoned.train.y[idx] == 4)
    patch = poisoned.train.x[idx][:, :, 29:, 29:]
    assert torch.all(patch[:, :2] == 1.0) and torch.all(patch[:, 2] == 0.0)


def test_missing_cifar_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_batch_1 not found.*cifar-10-python\.tar\.gz"):
        load_cifar10(tmp_path)
    _write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py/test_batch not found.*cifar-10-python"):
        load_cifar10(tmp_path)


def test_cifar10_files_in_data_dir_and_legacy_pickles(tmp_path):
    """The six files directly in data_dir; batches pickled as the released files were (protocol
    2, numpy.core module names, Python 2 str keys decoded as bytes) read the same."""
    _write_cifar(tmp_path / "flat")
    for name in ["data_batch_3", "test_batch"]:
        path = tmp_path / "flat" / name
        with open(path, "rb") as fh:
            batch = pickle.load(fh)
        raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray\n_reconstruct" in raw
        path.write_bytes(raw)
    bundle = load_cifar10(tmp_path / "flat")
    x = bundle.train.x.numpy()
    assert len(bundle.train) == 10 and bundle.train.x.dtype == torch.float32
    np.testing.assert_allclose(x[:, 0, 5, 7] * 255, 10 * np.arange(10), atol=1e-4)  # red = 10·k
    assert bundle.test.y.tolist() == [0, 1]


def test_cifar10_refuses_code_in_a_pickle(tmp_path):
    """A batch whose pickle would call anything but numpy's array reconstruction is refused
    before that call happens."""
    _write_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": Exploit(), b"labels": [0]}, fh)
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_2: refusing to load (posix|nt)\.system"):
        load_cifar10(tmp_path)
    assert not marker.exists()
    # An object array could smuggle arbitrary objects through the array's state: refused too.
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": np.array([None, 1], dtype=object), b"labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_2: refusing an object dtype"):
        load_cifar10(tmp_path)
    # A truncated file is reported as corrupt, naming it.
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"data_batch_2: not a readable CIFAR-10 python batch"):
        load_cifar10(tmp_path)


def test_cifar10_selection_and_meanstd_normalisation(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", per_batch=4)   # 20 train images, labels k % 10
    spec = {"name": "cifar10", "classes": [3, 1], "per_class_train": 2, "normalize": "meanstd",
            "poison": {"fraction": 0.25, "target": 0, "size": 2, "colour": [1, 1, 0], "seed": 0}}
    bundle = load_dataset(spec, data_dir=tmp_path)
    # Classes relabelled in the order given (3 -> 0, 1 -> 1), the first two of each in file order:
    # images 3 and 13 (class 3), 1 and 11 (class 1); then one of the four poisoned to label 0.
    assert bundle.meta["normalize"] == {"mode": "meanstd", "mean": [0.4914, 0.4822, 0.4465],
                                        "std": [0.2471, 0.2435, 0.2616]}
    red = bundle.train.x[:, 0, 10, 10].numpy()
    np.testing.assert_allclose(red * 0.2471 + 0.4914, np.array([30, 130, 10, 110]) / 255, atol=1e-6)
    green = bundle.test.x[:, 1, 0, 0].numpy()
    np.testing.assert_allclose(green, (20 / 255 - 0.4822) / 0.2435, atol=1e-6)
    # The trigger was stamped before normalisation: yellow = (1, 1, 0) on the pixel scale.
    i = int(bundle.extra["poisoned_train_idx"][0])
    corner = bundle.train.x[i, :, -1, -1].numpy()
    np.testing.assert_allclose(corner, (np.array([1.0, 1.0, 0.0]) - [0.4914, 0.4822, 0.4465])
                               / [0.2471, 0.2435, 0.2616], atol=1e-6)
    assert load_dataset({"name": "cifar10"}, data_dir=tmp_path).train.x.max() <= 1.0


def test_shan_cnn_matches_paper_parameter_count():
    from ntkbench.models import build

    model = build({"name": "shan-cnn", "input_shape": [3, 32, 32], "num_outputs": 10})
    # Paper 001, appendix K.2.5: "The total number of parameters for this model is 820394."
    assert sum(p.numel() for p in model.parameters()) == 820394
    model.eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="too small"):
        build({"name": "shan-cnn", "input_shape": [1, 8, 8], "num_outputs": 10})


# ------------------------------------------------------------------ MNIST file names, errors, split


def _write_idx(path, array, gz):
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(idx_bytes(array))
    else:
        path.write_bytes(idx_bytes(array))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_accepts_dotted_file_names(tmp_path, gz):
    images, labels = write_idx_set(tmp_path / "std", gz=gz)
    folder = tmp_path / "dotted" / "mnist"
    folder.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        for kind, arr in (("images.idx3-ubyte", images[prefix]), ("labels.idx1-ubyte", labels[prefix])):
            _write_idx(folder / (f"{prefix}-{kind}" + (".gz" if gz else "")), arr, gz)
    bundle = load_mnist(tmp_path / "dotted")
    np.testing.assert_allclose(bundle.train.x[:, 0].numpy(), images["train"] / 255.0, atol=1e-7)
    assert bundle.test.y.tolist() == labels["t10k"].tolist()


def test_idx_errors_name_the_file(tmp_path):
    arr = np.zeros((2, 28, 28), dtype=np.uint8)
    full = idx_bytes(arr)
    (tmp_path / "header").write_bytes(full[:10])  # magic + dims 1 and part of 2 of 3
    with pytest.raises(ValueError, match=r"header.*truncated IDX header"):
        read_idx(tmp_path / "header")
    with gzip.open(tmp_path / "cut.gz", "wb") as fh:
        fh.write(full)
    data = (tmp_path / "cut.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.gz: cannot decompress.*corrupt"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "plain.gz").write_bytes(full)  # not gzip at all
    with pytest.raises(ValueError, match=r"plain\.gz: cannot decompress"):
        read_idx(tmp_path / "plain.gz")
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_idx(tmp_path / "nothere")
    # Inside the loader the message names the data set file too.
    write_idx_set(tmp_path / "data" / "mnist", gz=False)
    (tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path / "data")


def test_missing_mnist_file_names_both_spellings_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte[.gz]" in message and "train-images.idx3-ubyte[.gz]" in message
    assert "yann.lecun" in message and "data_dir" in message


def _write_class_blocks(folder):
    """Train labels 1,0,2,1,0,1,0,2 and test labels 0,1,1,0,2,0; pixel value = image index."""
    folder.mkdir(parents=True)
    train_y = np.array([1, 0, 2, 1, 0, 1, 0, 2])
    test_y = np.array([0, 1, 1, 0, 2, 0])
    for prefix, y in (("train", train_y), ("t10k", test_y)):
        x = np.repeat(np.arange(len(y), dtype=np.uint8)[:, None, None], 28, 1).repeat(28, 2)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x, gz=True)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y, gz=True)


def test_per_class_split_takes_the_first_images_of_each_class_in_file_order(tmp_path):
    _write_class_blocks(tmp_path / "mnist")
    spec = {"name": "mnist", "classes": [0, 1], "per_class_train": 2, "per_class_test": 1}
    bundle = load_dataset(spec, data_dir=tmp_path)
    # Class 0 block first (images 1, 4), then class 1 (images 0, 3); test: 0 then 1.
    assert bundle.train.y.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(bundle.train.x[:, 0, 0, 0].numpy() * 255.0, [1, 4, 0, 3], atol=1e-4)
    assert bundle.test.y.tolist() == [0, 1]
    np.testing.assert_allclose(bundle.test.x[:, 0, 0, 0].numpy() * 255.0, [0, 1], atol=1e-4)
    assert bundle.meta["per_class_train"] == 2 and bundle.meta["per_class_test"] == 1
    # Classes [1, 0]: relabelled in that order, so the old class 1 comes first as label 0.
    swapped = load_dataset({**spec, "classes": [1, 0]}, data_dir=tmp_path)
    np.testing.assert_allclose(swapped.train.x[:, 0, 0, 0].numpy() * 255.0, [0, 3, 1, 4], atol=1e-4)
    # Pixels / 255 exactly as float32 division.
    assert bundle.train.x.dtype == torch.float32
    assert float(bundle.train.x[0, 0, 0, 0]) == np.float32(1) / np.float32(255)


def test_per_class_split_errors(tmp_path):
    _write_class_blocks(tmp_path / "mnist")
    with pytest.raises(ValueError, match=r"per_class_train: asked for 4 images of class 0 .* only 3"):
        load_dataset({"name": "mnist", "classes": [0, 1], "per_class_train": 4}, data_dir=tmp_path)
    with pytest.raises(ValueError, match="exclude each other"):
        load_dataset({"name": "mnist", "per_class_test": 1, "max_test": 2}, data_dir=tmp_path)
    with pytest.raises(ValueError, match="positive integer"):
        load_mnist(tmp_path, per_class_train=0)
    # All ten classes when `classes` is not given: classes 3..9 have no images here.
    with pytest.raises(ValueError, match="class 3"):
        load_mnist(tmp_path, per_class_test=1)


def test_first_n_split_and_mnist_meanstd(tmp_path):
    """first_train/first_test keep the first images in file order (dattri's MNIST-10 benchmark:
    the first 5000 / 500); meanstd uses MNIST's 0.1307 / 0.3081, recorded in meta."""
    _write_class_blocks(tmp_path / "mnist")
    bundle = load_dataset({"name": "mnist", "first_train": 5, "first_test": 2}, data_dir=tmp_path)
    assert bundle.train.y.tolist() == [1, 0, 2, 1, 0] and bundle.test.y.tolist() == [0, 1]
    np.testing.assert_allclose(bundle.train.x[:, 0, 0, 0].numpy() * 255.0, [0, 1, 2, 3, 4], atol=1e-4)
    assert bundle.meta["first_train"] == 5 and bundle.meta["first_test"] == 2
    # with classes: filtered first, then the first n of what is left (images 0, 1, 3 of classes 0/1)
    two = load_dataset({"name": "mnist", "classes": [0, 1], "first_train": 3}, data_dir=tmp_path)
    np.testing.assert_allclose(two.train.x[:, 0, 0, 0].numpy() * 255.0, [0, 1, 3], atol=1e-4)
    norm = load_dataset({"name": "mnist", "first_train": 5, "first_test": 2, "normalize": "meanstd"},
                        data_dir=tmp_path)
    expected = (np.arange(5, dtype=np.float32) / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081)
    np.testing.assert_allclose(norm.train.x[:, 0, 0, 0].numpy(), expected, rtol=1e-6)
    assert norm.meta["normalize"] == {"mode": "meanstd", "mean": [0.1307], "std": [0.3081]}
    with pytest.raises(ValueError, match="first_train: asked for the first 9 images but only 8"):
        load_mnist(tmp_path, first_train=9)
    with pytest.raises(ValueError, match="max_test and first_test exclude each other"):
        load_mnist(tmp_path, first_test=1, max_test=1)


def test_schema_takes_first_n_for_image_files_only():
    from ntkbench.config import ConfigError, validate_config
    import yaml

    with open("config.yaml") as fh:
        cfg = yaml.safe_load(fh)
    exp = cfg["experiments"]["digits2-mlp"]
    exp["data"] = {"name": "mnist", "first_train": 50, "first_test": 10, "normalize": "meanstd"}
    validate_config(cfg)
    exp["data"] = {"name": "digits", "first_train": 50}
    with pytest.raises(ConfigError, match="first_train"):
        validate_config(cfg)
