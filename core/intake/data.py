"""Data intake: .npz arrays, ImageFolder trees (directory, .zip or .tar), paired image/mask folders and the built-in
samples, all turned into NCHW inputs with int64 labels (N,) or masks (N, H, W), checked before any training starts.
Masks make a segmentation data set; labels a classification one.

The training split stays in its stored dtype (`Samples`: uint8 images are not expanded to float32 up front; an .npz
member stored uncompressed is memory-mapped, not read) and is converted and normalised per batch, on the training
device; the validation split, which every evaluation reads whole, is float32. An image folder's training split is
not decoded at intake (`ImageFiles`: only the headers are read, for the mode, the size and the pixel budget); its
images are decoded per batch by DataLoader worker processes while training (`BatchReader`).

Float arrays are used exactly as given (they carry the user's own preprocessing); uint8 arrays and image files are
scaled to [0, 1]. Normalisation is a separate, explicit step (`normalize`) whose parameters travel with the model.
"""

import gzip
import math
import mmap
import multiprocessing
import os
import shutil
import tempfile
import warnings
import weakref
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from squeezer.core import limits
from squeezer.core.config import Normalization
from squeezer.core.errors import DatasetError, MismatchError, ModelFormatError, unforeseen_as
from squeezer.core.intake.archives import is_archive, safe_extract
from squeezer.core.intake.models import check_pending_parity

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# UCI's optical handwritten digits (8×8, pixel values 0-16, 1,797 images; CC BY 4.0), as scikit-learn ships them:
# bundled so the default sample costs no scikit-learn import (sample_data/README.md).
DIGITS_FILE = Path(__file__).parent / "sample_data" / "digits.npz"
# sample:shapes: enough images for a small U-Net to learn the two shapes in a few CPU epochs, and a validation split
# large enough that one image moves pixel accuracy by little.
SHAPES_TRAIN, SHAPES_VAL = 1000, 200
NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# The only decoders PIL may use on an upload, whatever the file's bytes claim to be (PIL's format names).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# What intake holds per element: inputs as float32, labels and masks as int64.
_HELD_ITEMSIZE = {"x": 4, "y": 8}
IGNORED_FILES = {"thumbs.db", "desktop.ini"}
MAX_IMAGE_PIXELS = 64_000_000
_SPLITS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "test")}
MASK_MODES = ("L", "P", "I", "I;16", "1")  # single-channel modes whose pixel values are class indices
SHAPES_CLASSES = ("background", "square", "circle")


class Samples:
    """Training inputs kept as stored (uint8 or float, NCHW or NHWC, in memory or memory-mapped), handed out per
    batch as float32 NCHW: scaled to [0, 1] when uint8, then normalised. Indexing (`x[idx]`) gives that batch on CPU;
    `batch(idx, device)` moves the stored values first and converts them on `device`."""

    def __init__(self, stored: "np.ndarray | ImageFiles", *, channels_last: bool = False, mean=None, std=None):
        self.stored, self.channels_last = stored, channels_last
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.stored)

    @property
    def shape(self) -> torch.Size:
        n, *rest = self.stored.shape
        return torch.Size([n, rest[2], rest[0], rest[1]] if self.channels_last else [n, *rest])

    @property
    def dtype(self) -> np.dtype:
        return self.stored.dtype

    def normalized(self, mean, std) -> "Samples":
        return Samples(self.stored, channels_last=self.channels_last, mean=mean, std=std)

    def batch(self, idx, device: torch.device | str = "cpu") -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy() if idx.dim() else int(idx)
        # torch wants writable memory: a slice of a read-only memory map is copied (a fancy index already was)
        return self.converted(torch.from_numpy(np.require(self.stored[idx], requirements=["C", "W"])), device)

    def converted(self, values: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Stored values (one sample or a batch, on CPU) moved to `device` and converted there."""
        values = values.to(device, non_blocking=True)
        if values.dim() == len(self.stored.shape) - 1:
            values = values[None]
        if self.channels_last:
            values = values.permute(0, 3, 1, 2)
        x = values.float() / 255.0 if self.stored.dtype == np.uint8 else values.float()
        if self.mean is not None and self.std is not None:  # set together, by `normalized`
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.contiguous()

    def __getitem__(self, idx) -> torch.Tensor:
        return self.batch(idx)

    @property
    def lazy(self) -> bool:
        """Decoded on access (an image folder): training reads it through a `BatchReader`."""
        return isinstance(self.stored, ImageFiles)

    def reader(self) -> "BatchReader":
        if not isinstance(self.stored, ImageFiles):
            raise TypeError("only a lazy split (an image folder) is read through a BatchReader")
        return BatchReader(self.stored)


class ImageFiles(torch.utils.data.Dataset):
    """An image folder's split decoded on access: an item is one file, opened with the PIL allow-list and converted
    to the folder's mode and size as at intake, as uint8 (H, W, C). A slice or an index array stacks its items, so
    `Samples` reads it as an NHWC array. Only paths are held and sent to DataLoader workers; `keep` (the extracted
    tree of an archive) stays in this process and lives as long as the split does."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int], keep=None):
        self.files, self.mode, self.size, self._keep = files, mode, size, keep

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_keep": None}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.size[1], self.size[0], 1 if self.mode == "L" else 3)

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self._decode(self.files[idx])
        indices = range(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx).reshape(-1)
        if len(indices) == 0:
            return np.empty((0, *self.shape[1:]), dtype=np.uint8)
        return np.stack([self._decode(self.files[i]) for i in indices])

    __getitems__ = __getitem__  # a DataLoader hands a worker the whole batch's indices at once

    def _decode(self, file: Path) -> np.ndarray:
        from PIL import Image

        pixels = np.asarray(_open_image(file, Image).convert(self.mode).resize(self.size), dtype=np.uint8)
        return pixels[..., None] if pixels.ndim == 2 else pixels


PREFETCH_BATCHES = 4  # per worker: enough to hide decoding behind a training step, few enough to stay small


def loader_workers() -> int:
    """Decoding processes for a lazy image folder: one per CPU beside the training process, at most 8; none on one CPU
    or inside a daemonic process (which may not start children)."""
    cpus = os.cpu_count() or 1
    if cpus <= 1 or multiprocessing.current_process().daemon:
        return 0
    return min(cpus - 1, 8)


class _Plan:
    """A DataLoader's batch sampler that persists across epochs: the batches of the epoch being read."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchReader:
    """The stored values (uint8 NHWC) of each batch of an epoch, decoded ahead of training by persistent DataLoader
    workers, in the order `start` was given. `close` ends the workers."""

    def __init__(self, files: ImageFiles, workers: int | None = None):
        workers = loader_workers() if workers is None else workers
        self._plan = _Plan()
        self._iterator: Iterator[torch.Tensor] | None = None
        self._loader: torch.utils.data.DataLoader | None = torch.utils.data.DataLoader(
            files,
            batch_sampler=self._plan,
            num_workers=workers,
            collate_fn=torch.from_numpy,
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH_BATCHES if workers else None,
        )

    def start(self, batches: list[torch.Tensor]) -> None:
        if self._loader is None:
            raise RuntimeError("the BatchReader is closed")
        self._plan.batches = [batch.tolist() for batch in batches]
        self._iterator = iter(self._loader)

    def next(self) -> torch.Tensor:
        if self._iterator is None:
            raise RuntimeError("BatchReader.next before start, or after close")
        try:
            return next(self._iterator)
        except DatasetError as error:  # from a worker: its message carries the worker's traceback; keep the last line
            raise DatasetError(error.message.rstrip().rpartition("DatasetError: ")[2]) from None

    def close(self) -> None:
        self._iterator = self._loader = None  # the last references: the workers shut down with them


@dataclass
class Dataset:
    name: str
    x_train: "Samples | torch.Tensor"  # (N, C, H, W) per batch; Samples keep the stored dtype
    y_train: torch.Tensor  # int64 (N,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    task: str = "classification"  # "segmentation" when y_* are (N, H, W) masks

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one sample."""
        return tuple(self.x_train.shape[1:])

    def summary(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "train_samples": len(self.y_train),
            "val_samples": len(self.y_val),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }


def load_dataset(source: str | Path) -> Dataset:
    """The data set at `source`. Every failure is an InputError; one no check foresaw (a library's own exception on a
    malformed file) is invalid_dataset naming the exception."""
    with unforeseen_as(DatasetError, f"the data set {Path(str(source)).name}"):
        return _load_dataset(source)


def _load_dataset(source: str | Path) -> Dataset:
    if isinstance(source, str) and source.startswith("sample:"):
        return _load_sample(source.removeprefix("sample:"))
    path = Path(source)
    if not path.exists():
        raise DatasetError(f"data set {path.name} does not exist")
    if path.is_dir():
        return _load_image_folder(path, path.name)
    if path.suffix.lower() == ".npz":
        return _load_npz(path)
    if is_archive(path):
        tree = _ExtractedTree()  # lives as long as the data set's lazy training split reads from it
        return _load_image_folder(safe_extract(path, tree.path), path.name, tree)
    raise DatasetError(
        f"{path.name}: unknown data format; use .npz (x_train, y_train, x_val, y_val), an ImageFolder "
        "directory/.zip/.tar (train/<class>/*, val/<class>/*), paired folders (train/images, "
        "train/masks, val/images, val/masks) or sample:digits / sample:fashion-mnist / sample:shapes"
    )


class _ExtractedTree:
    """A temporary directory removed when the last reference to it goes, and only by the process that made it
    (DataLoader workers forked from that process hold copies)."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="squeezer-data-"))
        weakref.finalize(self, _remove_tree, self.path, os.getpid())


def _remove_tree(path: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


# -- samples ----------------------------------------------------------------------------------------------------


def _load_sample(name: str) -> Dataset:
    if name == "digits":
        with np.load(DIGITS_FILE, allow_pickle=False) as digits:
            x = digits["images"].astype(np.float32)[:, None] / 16.0
            labels = digits["labels"].astype(np.int64)
        order = np.random.default_rng(0).permutation(len(x))
        split = int(0.8 * len(x))
        train, val = order[:split], order[split:]
        return _build("sample:digits", x[train], labels[train], x[val], labels[val])
    if name == "fashion-mnist":
        files = [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ]
        if not all((FASHION_MNIST_DIR / f).is_file() for f in files):
            raise DatasetError(
                f"sample:fashion-mnist needs Debian's dataset-fashion-mnist files in {FASHION_MNIST_DIR}; "
                "install them with: sudo apt-get install dataset-fashion-mnist"
            )
        x_train, y_train, x_val, y_val = (_read_idx(FASHION_MNIST_DIR / f) for f in files)
        return _build("sample:fashion-mnist", x_train[:, None], y_train, x_val[:, None], y_val)
    if name == "shapes":
        x, masks = synthetic_shapes(SHAPES_TRAIN + SHAPES_VAL, seed=0)
        return _build("sample:shapes", x[:SHAPES_TRAIN], masks[:SHAPES_TRAIN], x[SHAPES_TRAIN:], masks[SHAPES_TRAIN:])
    raise DatasetError(f"unknown sample data set {name!r}; available: digits, fashion-mnist, shapes")


def synthetic_shapes(count: int, *, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """sample:shapes, a SYNTHETIC segmentation set so the segmentation flow runs offline: RGB images of one or two
    squares and circles of random size and colour on a noisy background, with (N, H, W) masks 0 background,
    1 square, 2 circle (SHAPES_CLASSES). The same seed gives the same arrays on every machine."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    images = np.empty((count, 3, size, size), dtype=np.float32)
    masks = np.zeros((count, size, size), dtype=np.uint8)
    for i in range(count):
        images[i] = rng.uniform(0.0, 0.4, 3)[:, None, None]
        for _ in range(rng.integers(1, 3)):
            kind = int(rng.integers(1, 3))
            radius = int(rng.integers(3, 8))
            cy, cx = rng.integers(radius, size - radius, 2)
            if kind == 1:
                inside = (np.abs(rows - cy) <= radius) & (np.abs(cols - cx) <= radius)
            else:
                inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
            images[i][:, inside] = rng.uniform(0.5, 1.0, 3)[:, None]
            masks[i][inside] = kind
    images += rng.normal(0.0, 0.08, images.shape).astype(np.float32)
    return np.clip(images, 0.0, 1.0), masks


def _read_idx(path: Path) -> np.ndarray:
    """The IDX format of (Fashion-)MNIST: big-endian dimension sizes, then uint8 data."""
    with gzip.open(path, "rb") as file:
        data = file.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


# -- arrays -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NpyMember:
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    header_bytes: int


def _check_npz_members(path: Path) -> dict[str, _NpyMember]:
    """Every array's size from its .npy header (shape × dtype), before anything is allocated: the member must unpack
    to exactly its header plus that many bytes (compressed or not), and what intake will hold of all four arrays must
    fit `max_dataset_bytes`. Object arrays (which need unpickling) are refused here too."""
    held, found = 0, {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            missing = [key for key in NPZ_KEYS if key not in members]
            if missing:
                raise DatasetError(f"{path.name} lacks {missing}; an .npz data set holds {', '.join(NPZ_KEYS)}")
            for key in NPZ_KEYS:
                info = members[key]
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read(member, max_header_size=10_000)
                    header_bytes = member.tell()
                found[key] = _NpyMember(info, tuple(shape), fortran, dtype, header_bytes)
                if dtype.hasobject:
                    raise DatasetError(f"{path.name}: {key} holds Python objects (pickled arrays are refused)")
                elements = math.prod(shape)
                if info.file_size != header_bytes + elements * dtype.itemsize:
                    raise DatasetError(
                        f"{path.name}: {key}'s header says {shape} of {dtype} "
                        f"({elements * dtype.itemsize:,} bytes) but the member holds "
                        f"{info.file_size - header_bytes:,} bytes"
                    )
                held += elements * _HELD_ITEMSIZE[key[0]]
    except DatasetError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DatasetError(f"{path.name} is not a readable .npz file: {str(error)[:200]}") from None
    limits.check(f"{path.name} as float32 inputs and int64 labels, in bytes,", held, "max_dataset_bytes", DatasetError)
    return found


def _memory_map(path: Path, member: _NpyMember) -> np.ndarray | None:
    """An .npz member stored uncompressed, mapped from the file instead of read; None when it is deflated."""
    if member.info.compress_type != zipfile.ZIP_STORED or member.fortran or member.dtype.hasobject:
        return None
    with path.open("rb") as file:
        file.seek(member.info.header_offset + 26)  # the local header's name and extra-field lengths
        name_length, extra_length = np.frombuffer(file.read(4), dtype="<u2")
    offset = member.info.header_offset + 30 + int(name_length) + int(extra_length) + member.header_bytes
    if math.prod(member.shape) == 0:
        return None
    mapped = np.memmap(path, dtype=member.dtype, mode="r", offset=offset, shape=member.shape)
    if hasattr(mmap, "MADV_RANDOM") and isinstance(getattr(mapped, "_mmap", None), mmap.mmap):
        # batches are random rows: no read-ahead of their neighbours (numpy's stubs omit the private `_mmap`)
        mapped._mmap.madvise(mmap.MADV_RANDOM)  # type: ignore[attr-defined]
    return mapped


def _load_npz(path: Path) -> Dataset:
    members = _check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            mapped = _memory_map(path, members["x_train"])
            arrays = {key: archive[key] for key in NPZ_KEYS if not (key == "x_train" and mapped is not None)}
            if mapped is not None:
                arrays["x_train"] = mapped
    except DatasetError:
        raise
    except ValueError as error:
        raise DatasetError(f"{path.name} holds Python objects (pickled arrays are refused): {error}") from None
    except Exception as error:
        raise DatasetError(f"{path.name} is not a readable .npz file: {str(error)[:200]}") from None
    return _build(path.name, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"])


def _to_nchw(x: np.ndarray, split: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise DatasetError(f"x_{split} must be (N, C, H, W), (N, H, W, C) or (N, H, W); it has shape {x.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return x.transpose(0, 3, 1, 2)
    return x


_FINITE_CHECK_ROWS = 4096  # rows checked at a time, so a memory-mapped split is never read whole


def _images(x: "np.ndarray | ImageFiles", split: str) -> "Samples | torch.Tensor":
    """The validation split as float32 NCHW; the training split as `Samples` in its stored dtype."""
    if x.dtype.kind not in "fiub":
        raise DatasetError(f"x_{split} has dtype {x.dtype}; use uint8 or float arrays")
    if x.dtype.kind == "f":
        for start in range(0, len(x), _FINITE_CHECK_ROWS):
            if not np.isfinite(x[start : start + _FINITE_CHECK_ROWS]).all():
                raise DatasetError(f"x_{split} contains NaN or infinite values")
    if x.ndim == 3:
        x = x[:, None]
    channels_last = isinstance(x, ImageFiles) or _to_nchw(x, split) is not x
    samples = Samples(x, channels_last=channels_last)  # NHWC stays NHWC until a batch is read
    if split == "train":
        return samples
    return samples.batch(slice(None))


def _labels(y: np.ndarray, split: str, count: int) -> torch.Tensor:
    """One class index per sample (N,), or a class index per pixel (N, H, W); (N, 1) and (N, 1, H, W) are squeezed."""
    y = np.asarray(y)
    if y.ndim in (2, 4) and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 3):
        raise DatasetError(
            f"y_{split} must be one class index per sample (N,) or a mask per sample (N, H, W); it has shape {y.shape}"
        )
    if len(y) != count:
        raise DatasetError(f"x_{split} has {count} samples but y_{split} has {len(y)} labels")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.equal(np.mod(y, 1), 0).all():
            raise DatasetError(f"y_{split} must hold integer class indices")
    elif y.dtype.kind not in "iu":
        raise DatasetError(f"y_{split} has dtype {y.dtype}; use integer class indices")
    if len(y) and y.min() < 0:
        raise DatasetError(f"y_{split} holds negative labels; class indices start at 0")
    return torch.from_numpy(y.astype(np.int64))


def _build(name: str, x_train, y_train, x_val, y_val) -> Dataset:
    tensors = {}
    for split, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
        x = x if isinstance(x, ImageFiles) else np.asarray(x)
        if x.ndim == 0 or len(x) == 0:
            raise DatasetError(f"the {split} split is empty")
        tensors[split] = (_images(x, split), _labels(y, split, len(x)))
    (xt, yt), (xv, yv) = tensors["train"], tensors["val"]
    assert isinstance(xv, torch.Tensor)  # `_images` reads the validation split whole
    if xt.shape[1:] != xv.shape[1:]:
        raise DatasetError(f"train samples are {tuple(xt.shape[1:])} but val samples are {tuple(xv.shape[1:])}")
    if yt.dim() != yv.dim():
        raise DatasetError("one split holds class labels and the other masks; both must hold the same kind")
    task = "segmentation" if yt.dim() == 3 else "classification"
    for split, x, y in (("train", xt, yt), ("val", xv, yv)):
        if task == "segmentation" and y.shape[1:] != x.shape[2:]:
            raise DatasetError(
                f"y_{split} masks are {tuple(y.shape[1:])} but x_{split} images are {tuple(x.shape[2:])} (H, W)"
            )
    if len(torch.unique(yt)) < 2:
        raise DatasetError("the train split holds a single class; a model needs at least two to learn")
    num_classes = int(max(yt.max(), yv.max())) + 1
    return Dataset(name, xt, yt, xv, yv, num_classes, task)


# -- image folders ----------------------------------------------------------------------------------------------


def _split_dir(root: Path, split: str) -> Path | None:
    for name in _SPLITS[split]:
        if (root / name).is_dir():
            return root / name
    return None


# radon D: the two layouts (classes, images/masks) at two depths, each check a distinct message for the uploader.
def _load_image_folder(root: Path, name: str, keep=None) -> Dataset:
    """train/<class>/* and val/<class>/*, or train/{images,masks}/* and val/{images,masks}/* (segmentation), at the
    top or inside one enclosing folder. Classification folders are read from their headers only (decoded lazily,
    `ImageFiles`); `keep` is what must outlive intake for that (an archive's extracted tree)."""
    if _split_dir(root, "train") is None:
        children = [c for c in root.iterdir() if c.is_dir() and not c.name.startswith((".", "__MACOSX"))]
        if len(children) == 1:
            root = children[0]
    train_dir, val_dir = _split_dir(root, "train"), _split_dir(root, "val")
    if train_dir is None or val_dir is None:
        raise DatasetError(
            f"{name}: an image folder needs train/<class>/ and val/<class>/ subfolders "
            "(or train/images, train/masks, val/images, val/masks for segmentation)"
        )
    if (train_dir / "images").is_dir() and (train_dir / "masks").is_dir():
        return _load_paired_folders(train_dir, val_dir, name)
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{name}: train/ holds no class folders")
    unknown = sorted(
        d.name for d in val_dir.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in classes
    )
    if unknown:
        raise DatasetError(f"{name}: val/ has classes that train/ lacks: {unknown[:5]}")
    budget = _DecodeBudget()
    train = _read_split(train_dir, classes, budget)
    val = _read_split(val_dir, classes, budget)
    headers = [(image_mode, image_size) for _, _, image_mode, image_size in train + val]
    mode = "L" if all(image_mode in ("L", "1", "I;16", "I") for image_mode, _ in headers) else "RGB"
    size = Counter(image_size for _, image_size in headers).most_common(1)[0][0]

    def split(entries):
        return ImageFiles([file for file, *_ in entries], mode, size, keep), np.array([e[1] for e in entries])

    (xt, yt), (xv, yv) = split(train), split(val)
    return _build(name, xt, yt, xv, yv)


def _load_paired_folders(train_dir: Path, val_dir: Path, name: str) -> Dataset:
    """Segmentation: each split's images/<stem>.* has a mask masks/<stem>.* holding class indices (mode L or P)."""
    budget = _DecodeBudget()
    splits = {
        split: _read_pairs(directory, name, budget) for split, directory in (("train", train_dir), ("val", val_dir))
    }
    images = [image for pairs in splits.values() for image, _ in pairs]
    mode = "L" if all(image.mode in ("L", "1", "I;16", "I") for image in images) else "RGB"
    size = Counter(image.size for image in images).most_common(1)[0][0]
    from PIL import Image

    def arrays(pairs):
        x = np.stack([np.asarray(image.convert(mode).resize(size), dtype=np.uint8) for image, _ in pairs])
        y = np.stack([np.asarray(mask.resize(size, Image.Resampling.NEAREST)).astype(np.int64) for _, mask in pairs])
        return x, y

    (xt, yt), (xv, yv) = arrays(splits["train"]), arrays(splits["val"])
    return _build(name, xt, yt, xv, yv)


class _DecodeBudget:
    """Pixels (× channels) decoded so far for one image folder, checked against max_decoded_pixels before each
    image is decoded: its size is known from the header alone."""

    def __init__(self):
        self.pixels = 0

    def charge(self, image, name: str) -> None:
        self.pixels += image.size[0] * image.size[1] * len(image.getbands())
        limits.check(
            f"the image folder's decoded pixels (× channels, up to {name})",
            self.pixels,
            "max_decoded_pixels",
            DatasetError,
        )


def _read_pairs(split_dir: Path, name: str, budget: _DecodeBudget) -> list:
    from PIL import Image

    def files(directory: Path) -> dict[str, Path]:
        if not directory.is_dir():
            raise DatasetError(f"{name}: {split_dir.name}/ needs both images/ and masks/ subfolders")
        return {
            f.stem: f
            for f in sorted(directory.iterdir())
            if f.is_file() and not f.name.startswith(".") and f.name.lower() not in IGNORED_FILES
        }

    images, masks = files(split_dir / "images"), files(split_dir / "masks")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        raise DatasetError(
            f"{name}: {split_dir.name}/images and {split_dir.name}/masks do not pair up; "
            f"unmatched names: {unmatched[:5]}"
        )
    if not images:
        raise DatasetError(f"{name}: {split_dir.name}/images holds no images")
    pairs = []
    for stem, image_file in images.items():
        image, mask = _open_image(image_file, Image, budget), _open_image(masks[stem], Image, budget)
        if mask.mode not in MASK_MODES:
            raise DatasetError(
                f"{split_dir.name}/masks/{masks[stem].name} is a {mask.mode} image; masks must be "
                "single-channel class indices (PNG mode L or P)"
            )
        if mask.size != image.size:
            raise DatasetError(
                f"{split_dir.name}/masks/{masks[stem].name} is {mask.size} but its image is {image.size}"
            )
        pairs.append((image, mask))
    return pairs


def _read_split(directory: Path, classes: list[str], budget: _DecodeBudget) -> list:
    """(file, label, mode, size) of every image, from its header alone (charged to `budget`, nothing decoded)."""
    from PIL import Image

    pairs = []
    for label, class_name in enumerate(classes):
        class_dir = directory / class_name
        if not class_dir.is_dir():
            continue
        for file in sorted(class_dir.iterdir()):
            if file.name.startswith(".") or file.name.lower() in IGNORED_FILES or file.is_dir():
                continue
            pairs.append((file, label, *_open_image(file, Image, budget, decode=False)))
    if not pairs:
        raise DatasetError(f"{directory.name}/ holds no images")
    return pairs


def _open_image(file: Path, Image, budget: _DecodeBudget | None = None, *, decode: bool = True):
    """The decoded image (a copy, the file closed), or with `decode=False` only its header's (mode, size). Each is
    charged to `budget` (from the header, before decoding) when one is given."""
    if file.suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(f"{file.parent.name}/{file.name} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file, formats=IMAGE_FORMATS) as image:
                if budget is not None:
                    budget.charge(image, f"{file.parent.name}/{file.name}")
                if not decode:
                    return image.mode, image.size
                image.load()
                return image.copy()
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DatasetError(f"{file.name} is too large an image (decompression bomb?)") from None
    except Exception as error:
        raise DatasetError(f"{file.parent.name}/{file.name} is not a readable image: {str(error)[:120]}") from None


# -- preparing for a model --------------------------------------------------------------------------------------


def normalize(data: Dataset, normalization: Normalization | None) -> Dataset:
    """(x - mean) / std per channel, applied once to both splits."""
    with unforeseen_as(DatasetError, f"the data set {data.name}"):
        return _normalized(data, normalization)


def _normalized(data: Dataset, normalization: Normalization | None) -> Dataset:
    if normalization is None:
        return data
    channels = data.input_shape[0]
    if len(normalization.mean) != channels or len(normalization.std) != channels:
        raise DatasetError(f"normalization needs {channels} mean and std values (one per channel)")
    if any(s <= 0 for s in normalization.std):
        raise DatasetError("normalization std values must be positive")
    mean = torch.tensor(normalization.mean).view(1, -1, 1, 1)
    std = torch.tensor(normalization.std).view(1, -1, 1, 1)
    x_train: Samples | torch.Tensor
    if isinstance(data.x_train, Samples):
        x_train = data.x_train.normalized(normalization.mean, normalization.std)  # per batch, when trained on
    else:
        x_train = (data.x_train - mean) / std
    return replace(data, x_train=x_train, x_val=(data.x_val - mean) / std)


def check_compatible(model, data: Dataset) -> None:
    """Channels, size and classes of the data against the model (a LoadedModel): a classifier outputs (batch,
    classes), a segmentation model (batch, classes, H, W) at the masks' size. Fills in the input shape of models
    that only the data can tell (ONNX graphs with free spatial axes), and checks those against onnxruntime at the
    data's size."""
    with unforeseen_as(ModelFormatError, "the model"):
        _check_compatible(model, data)


def _check_compatible(model, data: Dataset) -> None:
    if model.input_shape is not None and tuple(model.input_shape) != data.input_shape:
        raise MismatchError(
            f"the model takes inputs of shape {tuple(model.input_shape)} (C, H, W) but the data has {data.input_shape}"
        )
    check_pending_parity(model, data.x_val[:2])
    try:
        with torch.no_grad():
            output = model.module.eval()(data.x_val[:2])
    except Exception as error:
        raise MismatchError(
            f"the model cannot run on the data's {data.input_shape} inputs: {str(error)[:200]}"
        ) from None
    if data.task == "segmentation":
        if output.ndim != 4 or tuple(output.shape[2:]) != tuple(data.y_val.shape[1:]):
            raise MismatchError(
                f"a segmentation model must output (batch, classes, H, W) at the masks' size "
                f"{tuple(data.y_val.shape[1:])}; this model outputs {tuple(output.shape[1:])} per sample"
            )
    elif output.ndim != 2:
        raise MismatchError(
            f"a classifier must output (batch, classes); this model outputs {tuple(output.shape[1:])} per sample"
        )
    model.input_shape = data.input_shape
    model.num_classes = int(output.shape[1])
    if data.task == "segmentation" and model.num_classes == 1:  # binary: one logit (or sigmoid) per pixel
        if data.num_classes > 2:
            raise MismatchError(
                f"a model with one output channel segments two classes, but the masks hold indices up "
                f"to {data.num_classes - 1}"
            )
    elif data.num_classes > model.num_classes:
        raise MismatchError(
            f"the data has labels up to {data.num_classes - 1} but the model predicts only {model.num_classes} classes"
        )
