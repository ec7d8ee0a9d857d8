"""Sizes a model file or an architecture declares are bounded before anything they declare is allocated: .pt zip
records, .sqz tensors and decompressed bodies, registry arguments (on the meta device). Memory cases run in a
sandbox child and assert its peak."""

import json
import lzma
import struct
import zipfile
import zlib

import pytest
import torch

from squeezer.core import limits
from squeezer.core.artifacts.sqz import JSON_HEADER_MAGIC, MAGIC, _write_header, inspect_sqz
from squeezer.core.errors import ModelFormatError, UnsafeFormatError
from squeezer.core.intake.models import load_model
from squeezer.core.intake.registry import build_architecture
from squeezer.core.sandbox import Sandbox, SandboxLimits

TARGETS = "tests.core.sandbox_targets"
DIGITS = {"input_size": 8, "in_channels": 1, "num_classes": 10}


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(
        SandboxLimits(memory_bytes=16 << 30, cpu_s=60, wall_s=60), preload=("squeezer.core.intake.models", TARGETS)
    )
    yield box
    box.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, limit",
    [
        ({**DIGITS, "num_classes": 10**10}, "SQUEEZER_MAX_MODEL_PARAMS"),
        ({**DIGITS, "input_size": 200_000}, "SQUEEZER_MAX_INPUT_ELEMENTS"),
    ],
)
def test_lenet_arguments_past_the_budget_are_refused_without_allocating(args, limit, sandbox):
    outcome = sandbox.run_outcome(f"{TARGETS}:build", {"name": "lenet5", "args": args})
    assert outcome.error["code"] == "invalid_model" and limit in outcome.error["message"], outcome
    assert outcome.peak_rss_bytes < outcome_baseline(sandbox) + (64 << 20)


@pytest.mark.parametrize(
    "name, args, limit",
    [
        ("vgg-small", {"width": 100_000}, "SQUEEZER_MAX_MODEL_PARAMS"),
        ("torchvision:resnet18", {"num_classes": 10**9}, "SQUEEZER_MAX_MODEL_PARAMS"),
        ("torchvision:resnet18", {"input_size": 10_000}, "SQUEEZER_MAX_INPUT_ELEMENTS"),
        ("unet-small", {"width": 4096}, "SQUEEZER_MAX_MODEL_PARAMS"),
        ("torchvision:regnet_x_400mf", {"num_classes": 10**9}, "SQUEEZER_MAX_MODEL_PARAMS"),
    ],
)
def test_registry_arguments_past_the_budget_are_refused(name, args, limit):
    with pytest.raises(ModelFormatError, match=limit):
        build_architecture(name, args)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torchvision:regnet_x_400mf", "torchvision:shufflenet_v2_x0_5", "resnet20"])
def test_builders_that_compute_their_layout_with_tensors_pass_the_size_check(name):
    """RegNet calls .tolist() on a tensor while it builds, which the meta device cannot answer."""
    module = build_architecture(name, {"num_classes": 10})
    assert all(p.device.type == "cpu" for p in module.parameters())


def test_activations_are_bounded_on_the_meta_device():
    with limits.using(limits.IntakeLimits(max_activation_elements=1_000_000)):
        with pytest.raises(ModelFormatError, match="activations.*SQUEEZER_MAX_ACTIVATION_ELEMENTS"):
            build_architecture("resnet20", {"input_size": 256})
        build_architecture("resnet20", {})  # 32×32: about 0.6 M activation elements


_BASELINE: dict = {}


def outcome_baseline(sandbox) -> int:
    """Peak memory of a child that builds a small model: what the bounded cases are measured against."""
    if "peak" not in _BASELINE:
        _BASELINE["peak"] = sandbox.run_outcome(f"{TARGETS}:build", {"name": "lenet5", "args": DIGITS}).peak_rss_bytes
    return _BASELINE["peak"]


def torch_zip_with(path, records: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in records.items():
            zf.writestr(name, data)
    return path


@pytest.mark.slow
def test_a_deflated_pt_record_is_refused_before_torch_inflates_it(tmp_path, sandbox):
    state = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(4)}, state)
    with zipfile.ZipFile(state) as zf:
        records = {info.filename: zf.read(info) for info in zf.infolist()}
    data_key = next(name for name in records if "/data/" in name)
    records[data_key] = b"\0" * (1 << 30)  # 1 GiB of zeros, about 1 MiB deflated
    bomb = torch_zip_with(tmp_path / "bomb.pt", records, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 4 << 20
    outcome = sandbox.run_outcome(f"{TARGETS}:read_state", {"path": str(bomb)})
    assert outcome.error["code"] == "invalid_model" and "zip bomb" in outcome.error["message"], outcome
    assert outcome.peak_rss_bytes < outcome_baseline(sandbox) + (64 << 20)


def test_a_pt_record_compressed_within_the_ratio_is_refused(tmp_path):
    state = tmp_path / "state.pt"
    torch.save({"w": torch.randn(1000)}, state)
    with zipfile.ZipFile(state) as zf:
        records = {info.filename: zf.read(info) for info in zf.infolist()}
    deflated = torch_zip_with(tmp_path / "deflated.pt", records, zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelFormatError, match="is compressed"):
        load_model(deflated, architecture="lenet5", arch_args=DIGITS)


def test_pt_records_past_the_model_budget_are_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    with limits.using(limits.IntakeLimits(max_model_bytes=1000)):
        with pytest.raises(ModelFormatError, match="SQUEEZER_MAX_MODEL_BYTES"):
            load_model(path, architecture="lenet5", arch_args=DIGITS)


def test_a_legacy_pt_is_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFormatError, match="legacy torch.save"):
        load_model(path, architecture="lenet5", arch_args=DIGITS)
    (tmp_path / "other.pt").write_bytes(b"not a zip")
    with pytest.raises(ModelFormatError, match="zip-format"):
        load_model(tmp_path / "other.pt", architecture="lenet5", arch_args=DIGITS)


def sqz_with(tensors: dict, payload: bytes, flag: int = 0, layout: str = "binary") -> bytes:
    """A .sqz whose header says `tensors`, in the current binary header or the first layout's JSON one."""
    fields = {"architecture": {"name": "lenet5", "args": {}}, "source_format": "x", "onnx_graph_bytes": 0}
    header = (
        _write_header({**fields, "tensors": tensors})
        if layout == "binary"
        else json.dumps({**fields, "tensors": tensors}).encode()
    )
    return with_header(header, payload, flag, MAGIC if layout == "binary" else JSON_HEADER_MAGIC)


def with_header(header: bytes, payload: bytes, flag: int = 0, magic: bytes = MAGIC) -> bytes:
    body = struct.pack("<I", len(header)) + header + payload
    if flag == 1:
        body = zlib.compress(body)
    elif flag == 2:
        body = lzma.compress(body, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}])
    return magic + bytes([flag]) + body


MISMATCHED = [
    ({"shape": [10**12], "dtype": "float32", "enc": "raw", "sizes": [0]}, b"", "parameter count"),
    ({"shape": [1000], "dtype": "float32", "enc": "raw", "sizes": [0]}, b"", "do not match"),
    ({"shape": [4], "dtype": "float32", "enc": "raw", "sizes": [64]}, b"\0" * 64, "do not match"),
    (
        {"shape": [100], "dtype": "float32", "enc": "dense", "values": "float16", "sizes": [2]},
        b"\0\0",
        "do not match",
    ),
    (
        {
            "shape": [8],
            "dtype": "float32",
            "enc": "sparse",
            "index": "bitmap",
            "nnz": 9,
            "values": "float32",
            "sizes": [1, 36],
        },
        b"\xff" + b"\0" * 36,
        "nonzeros",
    ),
    ({"shape": [4], "dtype": "float32", "enc": "raw", "sizes": [16]}, b"\0" * 4, "past the end"),
]


@pytest.mark.parametrize(
    "entry, payload, message, layout",
    [(*case, layout) for case in MISMATCHED for layout in ("binary", "json")]
    + [({"shape": [-1, 4], "dtype": "float32", "enc": "raw", "sizes": [0]}, b"", "shape", "json")],
)
def test_sqz_tensor_headers_must_match_their_payload(entry, payload, message, layout):
    """Both header layouts; a negative size only in JSON (a varint holds none)."""
    with pytest.raises(ModelFormatError, match=message):
        inspect_sqz(sqz_with({"w": entry}, payload, layout=layout))


RAW_W = {"shape": [4], "dtype": "float32", "enc": "raw", "sizes": [16]}


@pytest.mark.parametrize(
    "header, message",
    [
        (_write_header({"tensors": {"w": RAW_W}})[:-1], "ends early"),  # cut in the last varint
        (_write_header({"tensors": {"w": RAW_W}}) + b"\0", "past its last tensor"),
        (b"\x02{}\x01\x01w\x7f\x01\x04\x00\x10", "unknown dtype code 127"),
        (b"\x02{}\x01\x01w\x00\x01\x04\x07\x10", "unknown encoding code 7"),
        (b"\x02{}\x01\x01w\x00\x40" + b"\x01" * 64, "64 dimensions"),
        (b"\x02{}\x01\x01w\x00\x01" + b"\xff" * 12, "past 64 bits"),
        (b"\x02{}\x01\xff\xff\xff\xff\x0fw", "ends early"),  # a 4 GiB name in a 12-byte header
        (b"\x02{}\xff\xff\xff\xff\x0f", "ends early"),  # 4 G tensors announced, none there
        (b"\x02[]\x00", "not an object"),
        (_write_header({"tensors": {"w": RAW_W}}).replace(b"\x01\x01w", b"\x02\x01w"), "ends early"),
    ],
)
def test_sqz_binary_headers_are_read_within_their_own_bytes(header, message):
    """Every count and length of the binary header is checked against the header's bytes before it is used."""
    with pytest.raises(ModelFormatError, match=message):
        inspect_sqz(with_header(header, b"\0" * 16))


def test_sqz_binary_header_refuses_a_tensor_named_twice():
    header = _write_header({"tensors": {"w": RAW_W}})
    twice = header.replace(b"{}\x01", b"{}\x02", 1) + header[header.index(b"\x01w") :]
    with pytest.raises(ModelFormatError, match="appears twice"):
        inspect_sqz(with_header(twice, b"\0" * 32))


def test_sqz_header_length_past_the_body_is_refused():
    with pytest.raises(ModelFormatError, match="past the end"):
        inspect_sqz(MAGIC + b"\0" + struct.pack("<I", 1 << 30) + b"\x02{}\x00")


@pytest.mark.slow
@pytest.mark.parametrize("flag", [1, 2])
def test_sqz_decompression_stops_at_the_budget(flag, sandbox):
    bomb = sqz_with({}, b"\0" * (512 << 20), flag)
    assert len(bomb) < 4 << 20
    with limits.using(limits.IntakeLimits(max_model_bytes=1 << 20)):
        with pytest.raises(ModelFormatError, match="decompressed size.*SQUEEZER_MAX_MODEL_BYTES"):
            inspect_sqz(bomb)
    outcome = sandbox.run_outcome(f"{TARGETS}:inspect_sqz", {"data": bomb.hex(), "max_model_bytes": 1 << 20})
    assert outcome.error["code"] == "invalid_model", outcome
    assert outcome.peak_rss_bytes < outcome_baseline(sandbox) + (96 << 20)
