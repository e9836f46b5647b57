"""BadNet poisoning: trigger placement, relabelling and the saved poisoned indices."""
import numpy as np
import pytest
import torch

from ntkbench.data import DataBundle, Split, load_bundle, load_dataset, save_bundle
from ntkbench.data.poison import poison_bundle, stamp_trigger, trigger_slices


@pytest.mark.parametrize("corner, margin, rows, cols", [
    ("top-left", 0, (0, 2), (0, 2)),
    ("top-right", 0, (0, 2), (4, 6)),
    ("bottom-left", 0, (3, 5), (0, 2)),
    ("bottom-right", 0, (3, 5), (4, 6)),
    ("bottom-right", 1, (2, 4), (3, 5)),
    ("top-left", 2, (2, 4), (2, 4)),
])
def test_trigger_slices_in_each_corner(corner, margin, rows, cols):
    # 5 rows × 6 columns, a 2-pixel square.
    r, c = trigger_slices(5, 6, size=2, corner=corner, margin=margin)
    assert (r.start, r.stop) == rows and (c.start, c.stop) == cols


def test_stamp_trigger_writes_exactly_the_square_per_channel():
    x = torch.full((2, 3, 4, 4), 0.25)
    out = stamp_trigger(x, size=2, colour=[1.0, 0.5, 0.0], corner="bottom-right")
    expected = np.full((2, 3, 4, 4), 0.25, dtype=np.float32)
    expected[:, 0, 2:, 2:] = 1.0
    expected[:, 1, 2:, 2:] = 0.5
    expected[:, 2, 2:, 2:] = 0.0
    np.testing.assert_array_equal(out.numpy(), expected)
    assert torch.all(x == 0.25)  # the input is not modified


def test_stamp_trigger_grey_scalar_top_left():
    x = torch.zeros(1, 1, 3, 3)
    out = stamp_trigger(x, size=1, colour=0.75, corner="top-left")
    assert out[0, 0].tolist() == [[0.75, 0, 0], [0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("kwargs, message", [
    ({"colour": [1.0, 0.0]}, "2 values given but the images have 3"),
    ({"colour": 1.5}, "[0, 1] scale"),
    ({"size": 5}, "does not fit"),
    ({"corner": "centre"}, "unknown corner"),
])
def test_stamp_trigger_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        stamp_trigger(torch.zeros(1, 3, 4, 4), **kwargs)


def _tiny_bundle() -> DataBundle:
    # 20 training images, classes 0..3 five times each; pixel value encodes the image index so
    # we can tell which ones were stamped. 8 test images, classes 0..3 twice.
    train_x = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1).expand(20, 1, 4, 4) / 100
    test_x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 4, 4) / 100
    return DataBundle(train=Split(train_x.clone(), torch.arange(20) % 4),
                      test=Split(test_x.clone(), torch.arange(8) % 4), num_classes=4,
                      meta={"name": "tiny"})


def test_poison_bundle_relabels_and_records_indices():
    bundle = _tiny_bundle()
    out = poison_bundle(bundle, fraction=0.25, target=1, size=1, colour=1.0, corner="top-right", seed=3)
    idx = out.extra["poisoned_train_idx"]
    # round(0.25 * 20) = 5 poisoned images, all from classes other than the target 1.
    assert len(idx) == 5 and np.all(np.diff(idx) > 0)
    assert np.all(bundle.train.y.numpy()[idx] != 1)
    np.testing.assert_array_equal(out.extra["poisoned_train_clean_y"], bundle.train.y.numpy()[idx])
    # Poisoned images: label 1 and a white pixel at (0, 3), everything else unchanged.
    for i in range(20):
        img, orig = out.train.x[i, 0], bundle.train.x[i, 0]
        if i in idx:
            assert out.train.y[i] == 1 and img[0, 3] == 1.0
            mask = torch.ones(4, 4, dtype=torch.bool)
            mask[0, 3] = False
            assert torch.all(img[mask] == orig[mask])
        else:
            assert out.train.y[i] == bundle.train.y[i] and torch.equal(img, orig)
    # Poisoned test set: the 6 test images of classes 0, 2, 3 (not 1), stamped, labelled 1.
    poisoned = out.extra_splits["poisoned_test"]
    np.testing.assert_array_equal(out.extra["poisoned_test_idx"], [0, 2, 3, 4, 6, 7])
    np.testing.assert_array_equal(out.extra["poisoned_test_true_y"], [0, 2, 3, 0, 2, 3])
    assert poisoned.y.tolist() == [1] * 6
    assert torch.all(poisoned.x[:, 0, 0, 3] == 1.0)
    assert torch.equal(poisoned.x[:, 0, 1:, :], bundle.test.x[[0, 2, 3, 4, 6, 7], 0, 1:, :])
    # The clean test set and the input bundle are untouched.
    assert torch.equal(out.test.x, bundle.test.x)
    assert bundle.train.y.tolist() == (torch.arange(20) % 4).tolist()
    assert out.meta["poison"] == {"fraction": 0.25, "target": 1, "size": 1, "colour": 1.0,
                                  "corner": "top-right", "margin": 0, "seed": 3,
                                  "num_poisoned_train": 5}


def test_poison_bundle_is_seeded():
    a = poison_bundle(_tiny_bundle(), fraction=0.25, target=1, seed=0)
    b = poison_bundle(_tiny_bundle(), fraction=0.25, target=1, seed=0)
    c = poison_bundle(_tiny_bundle(), fraction=0.25, target=1, seed=1)
    np.testing.assert_array_equal(a.extra["poisoned_train_idx"], b.extra["poisoned_train_idx"])
    assert not np.array_equal(a.extra["poisoned_train_idx"], c.extra["poisoned_train_idx"])


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 0.0}, "fraction must be in"),
    ({"fraction": 0.9}, "outside the target class"),  # 18 asked, only 15 non-target images
    ({"target": 4}, "outside 0..3"),
])
def test_poison_bundle_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        poison_bundle(_tiny_bundle(), **{"fraction": 0.1, "target": 0, **kwargs})


def test_poisoned_digits_through_load_dataset_and_npz(tmp_path):
    spec = {"name": "digits", "test_fraction": 0.3, "split_seed": 0,
            "poison": {"fraction": 0.1, "target": 4, "size": 2, "colour": 1.0, "corner": "bottom-right"}}
    bundle = load_dataset(spec)
    # 1257 training digits: round(125.7) = 126 poisoned; 540 test digits, 54 of them 4s.
    assert len(bundle.train) == 1257 and len(bundle.extra["poisoned_train_idx"]) == 126
    assert len(bundle.extra_splits["poisoned_test"]) == 540 - int((bundle.test.y == 4).sum()) == 486
    assert torch.all(bundle.extra_splits["poisoned_test"].x[:, 0, 6:, 6:] == 1.0)
    save_bundle(bundle, tmp_path / "data.npz")
    back = load_bundle(tmp_path / "data.npz")
    assert list(back.eval_splits) == ["test", "poisoned_test"]
    for key in ("poisoned_train_idx", "poisoned_train_clean_y", "poisoned_test_idx", "poisoned_test_true_y"):
        np.testing.assert_array_equal(back.extra[key], bundle.extra[key])
    assert back.meta["poison"]["target"] == 4
