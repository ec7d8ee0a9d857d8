import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file

from squeezer.core.errors import InputError, ModelFormatError, UnsafeFormatError, UnsupportedLayerError
from squeezer.core.intake.models import LoadedModel, load_model, onnx_outputs, save_model_dir
from squeezer.core.intake.registry import build_architecture, default_input_shape

DIGITS = {"input_size": 8, "in_channels": 1, "num_classes": 10}


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return build_architecture("lenet5", DIGITS).eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, args",
    [
        ("lenet5", {}),
        ("lenet5", DIGITS),
        ("vgg-small", {"num_classes": 7}),
        ("resnet20", {"in_channels": 1}),
        ("resnet56", {}),
        ("torchvision:resnet18", {"num_classes": 5, "in_channels": 1}),
        ("torchvision:mobilenet_v2", {"num_classes": 3}),
    ],
)
def test_registry_builds_every_architecture_for_its_input(name, args):
    module = build_architecture(name, args).eval()
    shape = default_input_shape(name, args)
    if name.startswith("torchvision"):
        shape = (shape[0], 64, 64)
    with torch.no_grad():
        out = module(torch.zeros(2, *shape))
    assert out.shape == (2, args.get("num_classes", 10))


@pytest.mark.parametrize("name, args", [("nope", {}), ("lenet5", {"colour": 3}), ("torchvision:not_a_model", {})])
def test_registry_refuses_unknown_names_and_arguments(name, args):
    with pytest.raises(ModelFormatError):
        build_architecture(name, args)


def test_model_directory_round_trip_keeps_weights_and_preprocessing(tmp_path, lenet):
    from squeezer.core.config import Normalization

    model = LoadedModel(
        lenet,
        {"name": "lenet5", "args": DIGITS},
        "squeezer",
        (1, 8, 8),
        10,
        Normalization(mean=[0.5], std=[0.25]),
        None,
    )
    loaded = load_model(save_model_dir(model, tmp_path / "m"))
    assert loaded.num_classes == 10 and loaded.input_shape == (1, 8, 8)
    assert loaded.preprocessing.mean == [0.5]
    for key, value in lenet.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value)


def test_zipped_model_directory_loads(tmp_path, lenet):
    directory = save_model_dir(
        LoadedModel(lenet, {"name": "lenet5", "args": DIGITS}, "squeezer", (1, 8, 8), 10, None, None), tmp_path / "m"
    )
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in directory.iterdir():
            zf.write(file, f"lenet/{file.name}")
    assert load_model(archive).architecture["name"] == "lenet5"


def test_safetensors_and_state_dict_need_an_architecture(tmp_path, lenet):
    save_file(lenet.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(lenet.state_dict(), tmp_path / "w.pt")
    for path, fmt in ((tmp_path / "w.safetensors", "safetensors"), (tmp_path / "w.pt", "state_dict")):
        with pytest.raises(ModelFormatError, match="--arch"):
            load_model(path)
        loaded = load_model(path, architecture="lenet5", arch_args=DIGITS)
        assert loaded.source_format == fmt
        assert torch.equal(loaded.module(torch.ones(1, 1, 8, 8)), lenet(torch.ones(1, 1, 8, 8)))


def test_weights_that_do_not_fit_the_architecture_are_named(tmp_path, lenet):
    save_file(lenet.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelFormatError, match="shape mismatch|missing|unexpected"):
        load_model(tmp_path / "w.safetensors", architecture="lenet5", arch_args={})


def test_nan_weights_are_refused(tmp_path, lenet):
    state = lenet.state_dict()
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelFormatError, match="NaN"):
        load_model(tmp_path / "w.safetensors", architecture="lenet5", arch_args=DIGITS)


class _WritesMarker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_torchscript_and_pt2_are_refused_without_unpickling(tmp_path, lenet):
    marker = tmp_path / "marker"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_WritesMarker(str(marker))))
    torch.save({"weights": _WritesMarker(str(marker))}, tmp_path / "evil.pt")
    torch.save(lenet, tmp_path / "full.pth")
    torch.jit.script(lenet).save(str(tmp_path / "script.pt"))
    (tmp_path / "program.pt2").write_bytes(b"PK\x03\x04whatever")
    for name in ("evil.pkl", "evil.pt", "full.pth", "script.pt", "program.pt2"):
        with pytest.raises(UnsafeFormatError, match="safetensors"):
            load_model(tmp_path / name, architecture="lenet5", arch_args=DIGITS)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":'])
def test_corrupt_files_give_clear_errors(tmp_path, content):
    for suffix in (".safetensors", ".onnx", ".zip", ".pt"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(InputError):  # invalid_model or invalid_archive: the user's error, never a crash
            load_model(path, architecture="lenet5", arch_args=DIGITS)


def test_onnx_intake_converts_and_agrees_with_onnxruntime(tmp_path, lenet):
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        lenet,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
        dynamo=False,
    )
    loaded = load_model(path)
    assert loaded.source_format == "onnx" and loaded.input_shape == (1, 8, 8) and loaded.num_classes == 10
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert np.allclose(loaded.module(x).numpy(), onnx_outputs(path.read_bytes(), x), atol=1e-4)
    # a converted model saves as a model directory and comes back with the same function
    reloaded = load_model(save_model_dir(loaded, tmp_path / "dir"))
    with torch.no_grad():
        assert torch.allclose(reloaded.module(x), loaded.module(x), atol=1e-6)


def test_onnx_external_data_is_refused(tmp_path):
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, 2.0])
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("float_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [weight],
    )
    path = tmp_path / "ext.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(ModelFormatError, match="external data"):
        load_model(path)


def test_onnx_with_unconvertible_operator_is_reported(tmp_path):
    node = helper.make_node("StringNormalizer", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.STRING, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [1, 1, 2, 2])],
    )
    path = tmp_path / "odd.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises((UnsupportedLayerError, ModelFormatError)):
        load_model(path)


def test_architecture_json_that_lies_is_refused(tmp_path, lenet):
    directory = save_model_dir(
        LoadedModel(lenet, {"name": "lenet5", "args": DIGITS}, "squeezer", (1, 8, 8), 10, None, None), tmp_path / "m"
    )
    (directory / "architecture.json").write_text(json.dumps({"name": "lenet5", "args": "not a dict"}))
    with pytest.raises(ModelFormatError, match="architecture.json"):
        load_model(directory)
    (directory / "architecture.json").write_text(json.dumps({"name": "resnet20", "args": {}}))
    with pytest.raises(ModelFormatError, match="does not fit"):
        load_model(directory)
