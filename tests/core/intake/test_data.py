import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from squeezer.core.config import Normalization
from squeezer.core.errors import DatasetError, MismatchError
from squeezer.core.intake.data import check_compatible, load_dataset, normalize
from squeezer.core.intake.models import LoadedModel
from squeezer.core.intake.registry import build_architecture


def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
        "y_train": np.arange(20) % 4,
        "x_val": rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
        "y_val": np.arange(8) % 4,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_digits_sample_is_scaled_to_unit_range():
    data = load_dataset("sample:digits")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert 0 <= float(data.x_train[:].min()) and float(data.x_train[:].max()) <= 1


def test_the_bundled_digits_are_scikit_learns_and_load_without_it(tmp_path):
    from sklearn.datasets import load_digits

    data = load_dataset("sample:digits")
    reference = load_digits()
    order = np.random.default_rng(0).permutation(len(reference.images))  # the split every figure was measured on
    train, val = order[:1437], order[1437:]
    assert np.array_equal(data.x_train[:].numpy()[:, 0] * 16, reference.images[train])
    assert np.array_equal(data.x_val[:].numpy()[:, 0] * 16, reference.images[val])
    assert np.array_equal(data.y_train.numpy(), reference.target[train])
    assert np.array_equal(data.y_val.numpy(), reference.target[val])
    probe = (
        "import sys; from squeezer.core.intake.data import load_dataset; load_dataset('sample:digits'); "
        "print('sklearn' in sys.modules)"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert loaded.stdout.strip() == "False"


def test_npz_nhwc_uint8_becomes_scaled_nchw(tmp_path):
    data = load_dataset(_npz(tmp_path / "d.npz"))
    assert data.x_train.shape == (20, 3, 8, 8) and data.x_train[:].dtype == torch.float32
    assert data.x_train.dtype == np.uint8  # stored as uploaded, scaled per batch
    assert float(data.x_train[:].max()) <= 1 and data.num_classes == 4


def test_npz_float_arrays_are_used_as_given(tmp_path):
    x = np.full((10, 1, 4, 4), 7.5, dtype=np.float32)
    data = load_dataset(
        _npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(10) % 2, x_val=x[:2], y_val=np.array([0, 1]))
    )
    assert float(data.x_train[:].max()) == 7.5


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"y_val": None}, "lacks"),
        ({"x_val": np.zeros((0, 8, 8, 3), np.uint8), "y_val": np.zeros(0, int)}, "empty"),
        ({"y_train": np.zeros(20, int)}, "single class"),
        ({"y_train": np.arange(20) - 5}, "negative"),
        ({"y_train": np.arange(19) % 4}, "labels"),
        ({"x_train": np.full((20, 1, 8, 8), np.nan, np.float32)}, "NaN"),
        ({"x_train": np.array(["a"] * 20)}, "dtype|shape"),
        ({"y_train": np.linspace(0, 1, 20)}, "integer"),
    ],
)
def test_npz_problems_are_named(tmp_path, overrides, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(_npz(tmp_path / "d.npz", **overrides))


def test_npz_with_pickled_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(
        path, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1), x_val=np.zeros(1), y_val=np.zeros(1)
    )
    with pytest.raises(DatasetError, match="pickled"):
        load_dataset(path)


def _image_tree(root, classes=("cat", "dog"), per_class=3, size=(6, 6)):
    for split in ("train", "val"):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", size, (40 * index, 10 * i, 0)).save(folder / f"{i}.png")
    return root


def test_image_folder_directory_and_tar(tmp_path):
    root = _image_tree(tmp_path / "tree")
    data = load_dataset(root)
    assert data.input_shape == (3, 6, 6) and data.num_classes == 2 and len(data.y_train) == 6
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="images")
    assert load_dataset(archive).input_shape == (3, 6, 6)


def test_non_image_file_in_image_folder_is_named(tmp_path):
    root = _image_tree(tmp_path / "tree")
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="notes.txt"):
        load_dataset(root)


def test_unknown_sample_and_format(tmp_path):
    with pytest.raises(DatasetError, match="available"):
        load_dataset("sample:imagenet")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(DatasetError, match="unknown data format"):
        load_dataset(tmp_path / "d.csv")


def test_normalize_applies_per_channel():
    data = load_dataset("sample:digits")
    normalized = normalize(data, Normalization(mean=[0.5], std=[0.5]))
    assert torch.allclose(normalized.x_val, (data.x_val - 0.5) / 0.5)
    with pytest.raises(DatasetError, match="one per channel"):
        normalize(data, Normalization(mean=[0.5, 0.5, 0.5], std=[1, 1, 1]))


def _lenet(**args):
    arch = {"input_size": 8, "in_channels": 1, "num_classes": 10} | args
    module = build_architecture("lenet5", arch)
    return LoadedModel(
        module,
        {"name": "lenet5", "args": arch},
        "squeezer",
        (arch["in_channels"], arch["input_size"], arch["input_size"]),
        arch["num_classes"],
        None,
        None,
    )


def test_compatibility_checks_channels_size_and_classes():
    data = load_dataset("sample:digits")
    check_compatible(_lenet(), data)
    with pytest.raises(MismatchError, match="shape"):
        check_compatible(_lenet(in_channels=3), data)
    with pytest.raises(MismatchError, match="shape"):
        check_compatible(_lenet(input_size=28), data)
    with pytest.raises(MismatchError, match="labels up to 9"):
        check_compatible(_lenet(num_classes=5), data)
