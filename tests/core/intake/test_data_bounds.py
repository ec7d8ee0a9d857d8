"""Data uploads bounded before allocation (issue 12, with the security issue): .npz arrays by their .npy headers,
image folders by the pixels they decode, and images opened only by an allow-list of decoders."""

import io
import mmap
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from squeezer.core import limits
from squeezer.core.errors import DatasetError
from squeezer.core.intake.data import load_dataset


def _npz(path, compressed: bool, **arrays):
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _arrays(n=20):
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 255, (n, 1, 8, 8), dtype=np.uint8),
        "y_train": np.arange(n) % 2,
        "x_val": rng.integers(0, 255, (4, 1, 8, 8), dtype=np.uint8),
        "y_val": np.arange(4) % 2,
    }


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_within_the_budget_loads_and_past_it_is_refused_naming_the_setting(tmp_path, compressed):
    path = _npz(tmp_path / "d.npz", compressed, **_arrays())
    assert len(load_dataset(path).y_train) == 20
    held = (20 + 4) * 64 * 4 + (20 + 4) * 8
    with limits.using(limits.IntakeLimits(max_dataset_bytes=held - 1)):
        with pytest.raises(DatasetError, match="SQUEEZER_MAX_DATASET_BYTES"):
            load_dataset(path)
    with limits.using(limits.IntakeLimits(max_dataset_bytes=held)):
        load_dataset(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_an_npz_member_whose_header_lies_about_its_size_is_refused(tmp_path, compressed):
    """A header claiming a huge shape over a small payload (a decompression bomb's cousin) is refused before
    numpy allocates the claimed array."""
    arrays = _arrays()
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 1, 8, 8)})
    forged = buffer.getvalue() + arrays["x_train"].tobytes()
    path = tmp_path / "forged.npz"
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        for key, value in arrays.items():
            if key == "x_train":
                archive.writestr("x_train.npy", forged)
            else:
                member = io.BytesIO()
                np.save(member, value)
                archive.writestr(f"{key}.npy", member.getvalue())
    with pytest.raises(DatasetError, match="header says"):
        load_dataset(path)


def _image_folder(root, size=8):
    for split, count in (("train", 4), ("val", 2)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("L", (size, size), 40 * i).save(folder / f"{i}.png")
    return root


def test_an_image_folder_past_its_decoded_pixel_budget_is_refused(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    assert len(load_dataset(root).y_train) == 8
    with limits.using(limits.IntakeLimits(max_decoded_pixels=12 * 64 - 1)):
        with pytest.raises(DatasetError, match="SQUEEZER_MAX_DECODED_PIXELS"):
            load_dataset(root)
    with limits.using(limits.IntakeLimits(max_decoded_pixels=12 * 64)):
        load_dataset(root)


def test_images_are_decoded_only_by_allowed_formats(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    Image.new("RGB", (8, 8)).save(root / "train" / "a" / "x.png", format="ICO")  # an ICO named .png
    with pytest.raises(DatasetError, match="x.png is not a readable image"):
        load_dataset(root)


def test_an_uncompressed_npz_is_memory_mapped_and_converted_per_batch(tmp_path):
    arrays = _arrays()
    path = _npz(tmp_path / "d.npz", False, **{**arrays, "x_train": arrays["x_train"].transpose(0, 2, 3, 1).copy()})
    data = load_dataset(path)
    assert _mapped(data.x_train.stored) and data.x_train.dtype == np.uint8  # not read, not expanded
    batch = data.x_train[torch.tensor([3, 1])]
    assert batch.dtype == torch.float32 and batch.shape == (2, 1, 8, 8)  # NHWC stored, NCHW handed out
    assert torch.equal(batch, torch.from_numpy(arrays["x_train"][[3, 1]]).float() / 255)
    compressed = load_dataset(_npz(tmp_path / "c.npz", True, **arrays))
    assert not _mapped(compressed.x_train.stored) and torch.equal(compressed.x_train[:], data.x_train[:])


def _mapped(array: np.ndarray) -> bool:
    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False
