"""The hostile-input corpus: builders that write one hostile file each, and the table of what the service must answer.

Every file is made fresh in a temporary folder (nothing binary is checked in). Pickle payloads write a marker file
when unpickled; the test asserts the marker never appears."""

import io
import json
import pickle
import stat
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper
from PIL import Image
from safetensors.torch import load_file, save_file

DIGITS_ARCH = {"name": "lenet5", "args": {"input_size": 8, "in_channels": 1, "num_classes": 10}}
BOMB_BYTES = 32 << 20  # unpacks to 32 MiB from ~32 KiB: far past the archive ratio limit (200)


class WritesMarker:
    """Unpickling this calls open(marker, "w"): proof of code execution if the marker ever exists."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass(frozen=True)
class Inputs:
    """What a builder may use: the folder to write in, the marker path, and a valid sample model directory."""

    dir: Path
    marker: Path
    model_dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name


@dataclass(frozen=True)
class Case:
    """`role`: model (artifact_id), weights (weights_artifact_id + lenet5 digits) or dataset (with the sample model).
    `stage`: where it is refused: upload (4xx problem), submit (422 problem) or job (a worker runs it: final status)."""

    name: str
    build: Callable[[Inputs], Path]
    role: str
    stage: str
    code: str | None
    status: int | str = 422
    upload: dict = field(default_factory=dict)  # overrides: filename, content_type


# -- models -----------------------------------------------------------------------------------------------------


def valid_weights(inputs: Inputs) -> dict[str, torch.Tensor]:
    return load_file(str(inputs.model_dir / "model.safetensors"))


def zip_dir(files: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def model_dir_files(inputs: Inputs, **replace: bytes) -> dict[str, bytes]:
    files = {name: (inputs.model_dir / name).read_bytes() for name in ("architecture.json", "model.safetensors")}
    return {**files, **replace}


def valid_model_zip(inputs: Inputs) -> Path:
    return zip_dir(model_dir_files(inputs), inputs.path("model.zip"))


def pickle_file(name: str) -> Callable[[Inputs], Path]:
    def build(inputs: Inputs) -> Path:
        path = inputs.path(name)
        path.write_bytes(pickle.dumps({"weights": WritesMarker(inputs.marker)}))
        return path

    return build


def torch_pickle(inputs: Inputs) -> Path:
    path = inputs.path("evil.pt")
    torch.save({"features.0.weight": WritesMarker(inputs.marker)}, path)
    return path


def full_module_pickle(inputs: Inputs) -> Path:
    from squeezer.core.intake.registry import build_architecture

    path = inputs.path("full-model.pth")
    torch.save(build_architecture(DIGITS_ARCH["name"], DIGITS_ARCH["args"]), path)
    return path


def torchscript(name: str) -> Callable[[Inputs], Path]:
    def build(inputs: Inputs) -> Path:
        from squeezer.core.intake.registry import build_architecture

        path = inputs.path(name)
        torch.jit.script(build_architecture(DIGITS_ARCH["name"], DIGITS_ARCH["args"]).eval()).save(str(path))
        return path

    return build


def exported_program(inputs: Inputs) -> Path:
    """A real torch.export archive (its loader unpickles)."""
    path = inputs.path("program.pt2")
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 10)).eval()
    torch.export.save(torch.export.export(module, (torch.zeros(1, 1, 8, 8),)), str(path))
    return path


def pickle_in_model_zip(inputs: Inputs) -> Path:
    """A model directory whose weights file is a pickle instead of safetensors."""
    evil = pickle.dumps(WritesMarker(inputs.marker))
    return zip_dir(model_dir_files(inputs, **{"model.safetensors": evil}), inputs.path("model.zip"))


def truncated(source: Callable[[Inputs], Path], keep: float = 0.5) -> Callable[[Inputs], Path]:
    def build(inputs: Inputs) -> Path:
        path = source(inputs)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path

    return build


def corrupted(source: Callable[[Inputs], Path]) -> Callable[[Inputs], Path]:
    """Every 7th byte past the first 16 flipped: the header still says what the file is, the rest is noise."""

    def build(inputs: Inputs) -> Path:
        path = source(inputs)
        data = bytearray(path.read_bytes())
        for index in range(16, len(data), 7):
            data[index] ^= 0xFF
        path.write_bytes(bytes(data))
        return path

    return build


def onnx_model(inputs: Inputs) -> Path:
    from squeezer.core.intake.registry import build_architecture

    path = inputs.path("model.onnx")
    module = build_architecture(DIGITS_ARCH["name"], DIGITS_ARCH["args"]).eval()
    torch.onnx.export(module, (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"], dynamo=False)
    return path


def onnx_external_data(inputs: Inputs) -> Path:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, 2.0])
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("float_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [weight],
    )
    path = inputs.path("external.onnx")
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def onnx_external_in_subgraph(inputs: Inputs) -> Path:
    """A Constant inside an If branch whose tensor names the embedded mode's database by a relative path."""
    constant = helper.make_tensor("c", TensorProto.FLOAT, [2], [1.0, 2.0])
    constant.data_location = TensorProto.EXTERNAL
    constant.ClearField("float_data")
    entry = constant.external_data.add()
    entry.key, entry.value = "location", ".squeezer/squeezer.db"
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=constant)],
        "then",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    path = inputs.path("branch.onnx")
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def upsampler_onnx(path: Path, scale: int = 128, channels: int = 10) -> Path:
    """A few hundred bytes that run fine on two digits samples, but blow each 8×8 input up by `scale` in both
    directions (Resize): at the evaluation batch the job would need tens of GiB (core.memory_budget)."""
    from onnx import numpy_helper

    initializers = [
        numpy_helper.from_array(np.full((channels, 1, 1, 1), 0.1, np.float32), "w"),
        numpy_helper.from_array(np.arange(channels, dtype=np.float32), "b"),
        numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"]),
            helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ],
        "upsampler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels])],
        initializers,
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


def safetensors_file(inputs: Inputs, name: str = "weights.safetensors", **edits: torch.Tensor) -> Path:
    path = inputs.path(name)
    save_file({**valid_weights(inputs), **edits}, str(path))
    return path


def nan_weights(inputs: Inputs) -> Path:
    weight = valid_weights(inputs)["features.0.weight"].clone()
    weight[0, 0, 0, 0] = float("nan")
    return safetensors_file(inputs, **{"features.0.weight": weight})


def inf_weights_in_model_zip(inputs: Inputs) -> Path:
    weights = valid_weights(inputs)
    weights["classifier.5.bias"] = torch.full_like(weights["classifier.5.bias"], float("inf"))
    save_file(weights, str(inputs.path("inf.safetensors")))
    files = model_dir_files(inputs, **{"model.safetensors": inputs.path("inf.safetensors").read_bytes()})
    return zip_dir(files, inputs.path("model.zip"))


def lying_safetensors_offsets(inputs: Inputs) -> Path:
    """A header that places a tensor a terabyte past the end of the file."""
    header = json.dumps(
        {"features.0.weight": {"dtype": "F32", "shape": [6, 1, 5, 5], "data_offsets": [0, 1 << 40]}}
    ).encode()
    path = inputs.path("lying.safetensors")
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 600)
    return path


def lying_safetensors_header_length(inputs: Inputs) -> Path:
    """The 8-byte header length claims 2**62 bytes."""
    path = inputs.path("huge-header.safetensors")
    path.write_bytes(struct.pack("<Q", 1 << 62) + b'{"a": 1}')
    return path


def weights_for_other_classes(inputs: Inputs) -> Path:
    """Weights of a 3-class LeNet named as the 10-class digits LeNet."""
    from squeezer.core.intake.registry import build_architecture

    module = build_architecture("lenet5", {**DIGITS_ARCH["args"], "num_classes": 3})
    path = inputs.path("three-classes.safetensors")
    save_file(module.state_dict(), str(path))
    return path


def two_model_dirs(inputs: Inputs) -> Path:
    files = model_dir_files(inputs)
    return zip_dir(
        {f"{top}/{name}": data for top in ("a", "b") for name, data in files.items()}, inputs.path("two.zip")
    )


def lying_architecture_json(inputs: Inputs) -> Path:
    arch = json.dumps({"name": "resnet56", "args": {"num_classes": 10}}).encode()
    return zip_dir(model_dir_files(inputs, **{"architecture.json": arch}), inputs.path("model.zip"))


def unknown_architecture(inputs: Inputs) -> Path:
    arch = json.dumps({"name": "os.system", "args": {"command": "touch /tmp/pwned"}}).encode()
    return zip_dir(model_dir_files(inputs, **{"architecture.json": arch}), inputs.path("model.zip"))


# -- archives ---------------------------------------------------------------------------------------------------


def zip_bomb(inputs: Inputs) -> Path:
    path = inputs.path("bomb.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("model.safetensors", "w") as member:
            chunk = b"\x00" * (1 << 20)
            for _ in range(BOMB_BYTES >> 20):
                member.write(chunk)
    return path


def tar_bomb(inputs: Inputs) -> Path:
    path = inputs.path("bomb.tar.gz")
    with tarfile.open(path, "w:gz", compresslevel=9) as tf:
        info = tarfile.TarInfo("train/a/zeros.png")
        info.size = BOMB_BYTES
        tf.addfile(info, io.BytesIO(b"\x00" * BOMB_BYTES))
    return path


def zip_sizes_lie(inputs: Inputs) -> Path:
    """Every member claims to unpack to 1 byte (local and central headers alike): small enough for any budget."""
    path = valid_model_zip(inputs)
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.find(signature)
        while start != -1:
            data[start + offset : start + offset + 4] = struct.pack("<I", 1)
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))
    return path


def zip_traversal(inputs: Inputs) -> Path:
    return zip_dir({**model_dir_files(inputs), "../../../../tmp/squeezer-escaped.txt": b"x"}, inputs.path("model.zip"))


def zip_symlink(inputs: Inputs) -> Path:
    path = zip_dir(model_dir_files(inputs), inputs.path("model.zip"))
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("passwd")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return path


def tar_with(member: tarfile.TarInfo, name: str) -> Callable[[Inputs], Path]:
    def build(inputs: Inputs) -> Path:
        path = inputs.path(name)
        with tarfile.open(path, "w") as tf:
            for split, label in (("train", "a"), ("train", "b"), ("val", "a")):
                add_png(tf, f"{split}/{label}/0.png", gray_png(label == "b"))
            tf.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
        return path

    return build


def tar_symlink() -> tarfile.TarInfo:
    member = tarfile.TarInfo("train/a/link.png")
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return member


def tar_hardlink() -> tarfile.TarInfo:
    member = tarfile.TarInfo("train/a/hard.png")
    member.type, member.linkname = tarfile.LNKTYPE, "/etc/shadow"
    return member


def tar_absolute_path() -> tarfile.TarInfo:
    member = tarfile.TarInfo("/tmp/squeezer-absolute.png")
    member.size = 1
    return member


# -- data sets --------------------------------------------------------------------------------------------------


def npz(name: str, **overrides) -> Callable[[Inputs], Path]:
    """A digits-shaped .npz (8×8 grayscale, 10 classes) with some arrays replaced."""

    def build(inputs: Inputs) -> Path:
        rng = np.random.default_rng(0)
        arrays = {
            "x_train": rng.random((60, 8, 8), dtype=np.float32),
            "y_train": np.arange(60) % 10,
            "x_val": rng.random((20, 8, 8), dtype=np.float32),
            "y_val": np.arange(20) % 10,
        }
        arrays.update({key: value(rng) if callable(value) else value for key, value in overrides.items()})
        path = inputs.path(name)
        np.savez(path, **arrays)
        return path

    return build


def npz_with_pickled_objects(inputs: Inputs) -> Path:
    path = npz("objects.npz")(inputs)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["y_train"] = np.array([WritesMarker(inputs.marker)] * 60, dtype=object)
    np.savez(path, **arrays, allow_pickle=True)
    return path


def gray_png(bright: bool = False, size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 255 if bright else 0).save(buffer, "PNG")
    return buffer.getvalue()


def add_png(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def image_folder(
    name: str, extra: dict[str, bytes] | None = None, *, classes=("a", "b"), mode: str = "L"
) -> Callable[[Inputs], Path]:
    """train/<class>/ and val/<class>/ with a few 8×8 images each, plus `extra` members."""

    def build(inputs: Inputs) -> Path:
        files = {}
        for split in ("train", "val"):
            for index, label in enumerate(classes):
                for sample in range(3):
                    files[f"{split}/{label}/{sample}.png"] = gray_png(index % 2 == 1, mode=mode)
        return zip_dir({**files, **(extra or {})}, inputs.path(name))

    return build


def decompression_bomb_png() -> bytes:
    """81 megapixels of 1-bit black: ~10 KiB of PNG, past the 64-megapixel limit."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


# PostScript that PIL would hand to Ghostscript (an external program) if it were allowed to guess the format.
EPS_AS_PNG = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n(/etc/passwd) (r) file\nshowpage\n%%EOF\n"
LONG_NAME = "é" * 45 + "名" * 40 + "🙂" * 10 + ".png"  # 99 characters, 254 bytes: as long as file systems allow
TOO_LONG_NAME = "名" * 90 + ".png"  # 274 bytes
CASES = [
    # pickles, TorchScript, torch.export: refused without unpickling
    Case("pickle_pkl", pickle_file("model.pkl"), "model", "submit", "unsafe_model_format"),
    Case("pickle_without_suffix", pickle_file("model"), "model", "submit", "unsafe_model_format"),
    Case("pickle_named_bin", pickle_file("weights.bin"), "weights", "submit", "unsafe_model_format"),
    Case("torch_save_with_payload", torch_pickle, "weights", "submit", "unsafe_model_format"),
    Case("full_module_pickle", full_module_pickle, "model", "submit", "unsafe_model_format"),
    Case("torchscript_pt", torchscript("script.pt"), "model", "submit", "unsafe_model_format"),
    Case("torchscript_as_zip", torchscript("script.zip"), "model", "submit", "unsafe_model_format"),
    Case("torch_export_pt2", exported_program, "model", "submit", "unsafe_model_format"),
    Case("pickle_inside_model_zip", pickle_in_model_zip, "model", "submit", "invalid_model"),
    # truncated and corrupted files of every accepted format
    Case("truncated_onnx", truncated(onnx_model), "model", "submit", "invalid_model"),
    Case("corrupted_onnx", corrupted(onnx_model), "model", "submit", "invalid_model"),
    Case("truncated_model_zip", truncated(valid_model_zip), "model", "submit", "invalid_archive"),
    Case("corrupted_model_zip", corrupted(valid_model_zip), "model", "submit", "invalid_archive"),
    Case("truncated_safetensors", truncated(safetensors_file), "weights", "submit", "invalid_model"),
    Case("truncated_state_dict", truncated(lambda i: _state_dict_file(i)), "weights", "submit", "invalid_model"),
    Case("truncated_npz", truncated(npz("data.npz")), "dataset", "submit", "invalid_dataset"),
    Case("truncated_image_zip", truncated(image_folder("images.zip")), "dataset", "submit", "invalid_archive"),
    Case("empty_file", lambda i: _write(i.path("empty.onnx"), b""), "model", "submit", "invalid_model"),
    # lies inside otherwise valid containers
    Case("safetensors_offsets_past_end", lying_safetensors_offsets, "weights", "submit", "invalid_model"),
    Case("safetensors_huge_header_length", lying_safetensors_header_length, "weights", "submit", "invalid_model"),
    Case("onnx_external_data", onnx_external_data, "model", "submit", "onnx_external_data"),
    Case("onnx_external_data_in_if_branch", onnx_external_in_subgraph, "model", "submit", "onnx_external_data"),
    Case("nan_weights", nan_weights, "weights", "submit", "invalid_model"),
    Case("inf_weights_in_model_zip", inf_weights_in_model_zip, "model", "submit", "invalid_model"),
    Case("architecture_json_lies", lying_architecture_json, "model", "submit", "invalid_model"),
    Case("architecture_unknown", unknown_architecture, "model", "submit", "invalid_model"),
    Case("two_model_dirs_in_zip", two_model_dirs, "model", "submit", "invalid_model"),
    Case(
        "upsampler_past_memory_budget", lambda i: upsampler_onnx(i.path("up.onnx")), "model", "submit", "job_too_large"
    ),
    # archives that explode, escape or link
    Case("zip_bomb", zip_bomb, "model", "submit", "invalid_archive"),
    Case("tar_gz_bomb", tar_bomb, "dataset", "submit", "invalid_archive"),
    Case("zip_sizes_lie", zip_sizes_lie, "model", "submit", "invalid_archive"),
    Case("zip_path_traversal", zip_traversal, "model", "submit", "invalid_archive"),
    Case("zip_symlink", zip_symlink, "model", "submit", "invalid_archive"),
    Case("tar_symlink", tar_with(tar_symlink(), "link.tar"), "dataset", "submit", "invalid_archive"),
    Case("tar_hardlink", tar_with(tar_hardlink(), "hard.tar"), "dataset", "submit", "invalid_archive"),
    Case("tar_absolute_path", tar_with(tar_absolute_path(), "abs.tar"), "dataset", "submit", "invalid_archive"),
    Case(
        "image_folder_eps_named_png",
        image_folder("eps.zip", {"train/a/evil.png": EPS_AS_PNG}),
        "dataset",
        "submit",
        "invalid_dataset",
    ),
    Case(
        "image_decompression_bomb",
        image_folder("bomb.zip", {"train/a/bomb.png": decompression_bomb_png()}),
        "dataset",
        "submit",
        "invalid_dataset",
    ),
    # data sets that cannot train this model
    Case("npz_pickled_objects", npz_with_pickled_objects, "dataset", "submit", "invalid_dataset"),
    Case(
        "npz_three_channels",
        npz(
            "rgb.npz",
            x_train=lambda r: r.random((60, 3, 8, 8), dtype=np.float32),
            x_val=lambda r: r.random((20, 3, 8, 8), dtype=np.float32),
        ),
        "dataset",
        "submit",
        "model_data_mismatch",
    ),
    Case(
        "npz_wrong_size",
        npz(
            "big.npz",
            x_train=lambda r: r.random((60, 16, 16), dtype=np.float32),
            x_val=lambda r: r.random((20, 16, 16), dtype=np.float32),
        ),
        "dataset",
        "submit",
        "model_data_mismatch",
    ),
    Case(
        "npz_labels_out_of_range",
        npz("labels.npz", y_train=np.arange(60) % 14),
        "dataset",
        "submit",
        "model_data_mismatch",
    ),
    Case(
        "npz_negative_labels", npz("negative.npz", y_val=-(np.arange(20) % 10)), "dataset", "submit", "invalid_dataset"
    ),
    Case(
        "npz_one_class",
        npz("one-class.npz", y_train=np.zeros(60, dtype=np.int64)),
        "dataset",
        "submit",
        "invalid_dataset",
    ),
    Case(
        "npz_empty",
        npz("empty.npz", x_train=np.zeros((0, 8, 8), np.float32), y_train=np.zeros(0, np.int64)),
        "dataset",
        "submit",
        "invalid_dataset",
    ),
    Case(
        "npz_nan_pixels",
        npz("nan.npz", x_val=np.full((20, 8, 8), np.nan, np.float32)),
        "dataset",
        "submit",
        "invalid_dataset",
    ),
    Case(
        "npz_missing_arrays",
        lambda i: _savez(i.path("partial.npz"), x_train=np.zeros((4, 8, 8))),
        "dataset",
        "submit",
        "invalid_dataset",
    ),
    Case(
        "image_folder_non_image_file",
        image_folder("mixed.zip", {"train/a/notes.txt": b"not an image"}),
        "dataset",
        "submit",
        "invalid_dataset",
    ),
    Case(
        "image_folder_corrupt_png",
        image_folder("corrupt.zip", {"train/b/broken.png": gray_png()[:30]}),
        "dataset",
        "submit",
        "invalid_dataset",
    ),
    Case("image_folder_one_class", image_folder("one.zip", classes=("a",)), "dataset", "submit", "invalid_dataset"),
    Case(
        "image_folder_rgb_for_gray_model",
        image_folder("rgb.zip", mode="RGB", classes=("a", "b")),
        "dataset",
        "submit",
        "model_data_mismatch",
    ),
    Case(
        "image_folder_name_too_long",
        image_folder("long.zip", {f"train/a/{TOO_LONG_NAME}": gray_png()}),
        "dataset",
        "submit",
        "invalid_archive",
    ),
    Case(
        "image_folder_without_splits",
        lambda i: zip_dir({"a/0.png": gray_png()}, i.path("flat.zip")),
        "dataset",
        "submit",
        "invalid_dataset",
    ),
    # refused before anything is stored or before the body is parsed
    Case(
        "upload_too_large",
        lambda i: _write(i.path("huge.onnx"), b"\x00" * (1 << 20 | 1)),
        "model",
        "upload",
        "payload_too_large",
        413,
    ),
    # names and content types are no one's business but the sanitiser's: these are stored fine, then run
    Case(
        "unicode_long_name_wrong_content_type",
        valid_model_zip,
        "model",
        "job",
        None,
        "succeeded",
        {"filename": "モデル-" + "ü" * 300 + ".zip", "content_type": "text/html; charset=utf-8"},
    ),
    Case(
        "image_folder_unicode_long_names",
        image_folder(
            "unicode.zip",
            {f"train/犬/{LONG_NAME}": gray_png(), f"val/犬/{LONG_NAME}": gray_png()},
            classes=("犬", "кошка"),
        ),
        "dataset",
        "job",
        None,
        "succeeded",
    ),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _savez(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _state_dict_file(inputs: Inputs) -> Path:
    path = inputs.path("weights.pt")
    torch.save(valid_weights(inputs), path)
    return path
