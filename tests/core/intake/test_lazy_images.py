"""Image folders decoded lazily (issue 12): the training split is read from headers at intake and decoded per batch
by DataLoader workers, giving exactly what decoding everything up front gave, and still refusing what is too big."""

import gc
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from squeezer.core import limits
from squeezer.core.config import AccuracyTarget, CompressConfig, LwctConfig
from squeezer.core.errors import Cancelled, DatasetError
from squeezer.core.intake.data import BatchReader, ImageFiles, Samples, load_dataset
from squeezer.core.pipeline import ModelSource, compress_files
from squeezer.core.samples import ensure_sample_model
from squeezer.core.train import fit


def _mixed_tree(root):
    """RGB images of two sizes (the rarer is resized) and one greyscale image (converted to RGB), random pixels."""
    rng = np.random.default_rng(0)
    files = []
    for split, count in (("train", 5), ("val", 2)):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                size = (7, 5) if i == 1 else (6, 4)
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                image = Image.fromarray(pixels[..., 0]) if i == 2 else Image.fromarray(pixels)
                image.save(folder / f"{i}.png")
                files.append((split, folder / f"{i}.png", name == "dog"))
    return files


def _decoded(files, split):
    """What intake decoded up front before: every image converted to RGB at the common size, NCHW in [0, 1]."""
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((6, 4))) for s, f, _ in files if s == split]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def test_lazy_folder_decodes_the_same_pixels_labels_and_order(tmp_path):
    files = _mixed_tree(tmp_path / "tree")
    data = load_dataset(tmp_path / "tree")
    assert isinstance(data.x_train.stored, ImageFiles) and data.x_train.lazy
    assert data.input_shape == (3, 4, 6) and data.x_train.shape == torch.Size([10, 3, 4, 6])
    expected = _decoded(files, "train")
    assert torch.equal(data.x_train[:], expected) and torch.equal(data.x_val, _decoded(files, "val"))
    assert data.y_train.tolist() == [int(dog) for s, _, dog in files if s == "train"]
    batches = [torch.tensor([0, 3, 7]), torch.tensor([1, 9])]
    for workers in (0, 1):
        reader = BatchReader(data.x_train.stored, workers)
        reader.start(batches)
        for idx in batches:
            assert torch.equal(data.x_train.converted(reader.next()), expected[idx])
        reader.close()


def test_training_on_a_lazy_folder_matches_training_in_memory(tmp_path):
    _mixed_tree(tmp_path / "tree")
    data = load_dataset(tmp_path / "tree")
    in_memory = Samples(data.x_train.stored[:], channels_last=True)

    def trained(x):
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(32, 2))
        fit(module, x, data.y_train, epochs=3, lr=0.05, batch_size=4, seed=1, augment="crop+flip")
        return module.state_dict()

    lazy, eager = trained(data.x_train), trained(in_memory)
    assert all(torch.equal(lazy[key], eager[key]) for key in eager)


def test_an_unreadable_image_fails_training_naming_the_file(tmp_path):
    _mixed_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "dog" / "0.png").write_bytes(
        (tmp_path / "tree" / "train" / "dog" / "0.png").read_bytes()[:60]
    )  # header intact, pixels cut
    data = load_dataset(tmp_path / "tree")
    reader = BatchReader(data.x_train.stored, 1)
    reader.start([torch.arange(10)])
    with pytest.raises(DatasetError, match=r"^dog/0.png is not a readable image"):
        reader.next()
    reader.close()


def _forged_png(path, width, height):
    """An 8×8 PNG whose header claims width × height (with a valid CRC): only decoding would find out."""
    Image.new("RGB", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29], data[29:33] = ihdr, struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "claimed, budget, message",
    [((5000, 5000), 10**6, "MAX_DECODED_PIXELS"), ((60000, 60000), None, "too large an image")],
)
def test_a_pixel_bomb_is_refused_from_its_header(tmp_path, claimed, budget, message):
    _mixed_tree(tmp_path / "tree")
    _forged_png(tmp_path / "tree" / "train" / "cat" / "bomb.png", *claimed)
    bounds = limits.IntakeLimits(max_decoded_pixels=budget) if budget else limits.IntakeLimits()
    with limits.using(bounds), pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "tree")


def _digit_folder(root):
    """sample:digits' 0s and 1s as 8×8 greyscale PNGs, in the layout an ImageFolder has."""
    digits = load_digits()
    for split, part in (("train", slice(0, 240)), ("val", slice(240, 360))):
        for i, (image, label) in enumerate(zip(digits.images[part], digits.target[part], strict=True)):
            if label < 2:
                folder = root / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("packed", [False, True])
def test_compress_runs_on_an_image_folder(tmp_path, packed):
    source = _digit_folder(tmp_path / "digits")
    if packed:
        with zipfile.ZipFile(tmp_path / "digits.zip", "w") as archive:
            for file in sorted(source.rglob("*.png")):
                archive.write(file, file.relative_to(tmp_path))
        source = tmp_path / "digits.zip"
    config = CompressConfig(
        device="cpu",
        lwct=LwctConfig(sparsity=0.5, prune_epochs=1, epochs_per_step=1, min_steps_per_stage=4),
        target=AccuracyTarget(max_drop=5.0),
    )
    report = compress_files(ModelSource(ensure_sample_model("digits")[0]), source, tmp_path / "out", config)
    assert report["dataset"]["train_samples"] > 0 and report["compressed"]["accuracy"] > 0.5


def _children() -> list[str]:
    """Child pids of every thread of this process; a thread that ends while it is listed has none."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += (task / "children").read_text().split()
        except FileNotFoundError:
            continue
    return sorted(pids)


@pytest.mark.slow
def test_workers_end_with_the_stage_and_an_archive_tree_with_the_data_set(tmp_path):
    _mixed_tree(tmp_path / "tree")
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as archive:
        for file in sorted((tmp_path / "tree").rglob("*.png")):
            archive.write(file, file.relative_to(tmp_path))
    data = load_dataset(tmp_path / "tree.zip")
    extracted = data.x_train.stored.files[0].parents[3]
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(72, 2))
    before, calls = _children(), []
    with pytest.raises(Cancelled):
        fit(
            module,
            data.x_train,
            data.y_train,
            epochs=2,
            lr=0.01,
            batch_size=2,
            should_stop=lambda: calls.append(1) or len(calls) > 2,
        )
    assert _children() == before and extracted.is_dir()
    del data
    gc.collect()
    assert not extracted.exists()
