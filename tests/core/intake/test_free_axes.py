"""Free axes as exporters write them (issue 27): a text-direction classifier in the shape of PaddleOCR's MobileNetV3,
with the input header an older paddle2onnx wrote (`x: [-1, 3, ?, ?]`, a dim_value of -1 for the batch and unnamed
height and width), goes through intake, lwct and filter with parity against onnxruntime on the file as uploaded;
every other way of writing a free axis is read as free and sized from the data."""

import dataclasses
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, LwctConfig
from squeezer.core.intake.models import load_model
from squeezer.core.intake.onnx_normalize import agrees_at, declared_sizes, normalize_onnx
from squeezer.core.pipeline import ModelSource, check_inputs, compress_files
from tests.helpers import own_options

HEIGHT, WIDTH = 16, 48  # the data's size; the file declares none
LWCT = LwctConfig(sparsity_grid=[0.5], prune_epochs=1, epochs_per_step=0, min_steps_per_stage=10)
FILTER = FilterConfig(
    init=["l1"], importance_epochs=1, epochs_per_step=1, min_steps_per_stage=10, levels=[0.3], refinements=0
)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, channels // 4, 1), nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        gate = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(gate))))


class TextDirection(nn.Module):
    """MobileNetV3-small's pieces as PaddleOCR's direction classifier uses them: a hard-swish stem, a depthwise block
    with squeeze-excite, a pointwise projection, global pooling and a two-class softmax head."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)
        self.depthwise, self.depthwise_bn = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.excite = SqueezeExcite(8)
        self.project, self.project_bn = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        x = nn.functional.hardswish(self.stem_bn(self.stem(x)))
        x = self.excite(torch.relu(self.depthwise_bn(self.depthwise(x))))
        x = nn.functional.hardswish(self.project_bn(self.project(x)))
        return torch.softmax(self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)), dim=1)


def _text_lines(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Line images whose ink sits in the upper half (class 0, upright) or the lower half (class 1, turned 180°)."""
    rng = np.random.default_rng(seed)
    x = rng.random((count, 3, HEIGHT, WIDTH), dtype=np.float32) * 0.3
    y = np.arange(count) % 2
    for image, label in zip(x, y, strict=True):
        rows = slice(2, HEIGHT // 2) if label == 0 else slice(HEIGHT // 2, HEIGHT - 2)
        image[:, rows, rng.integers(0, WIDTH // 2) :] += 0.7
    return x, y


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> str:
    x_train, y_train = _text_lines(160, seed=0)
    x_val, y_val = _text_lines(40, seed=1)
    path = tmp_path_factory.mktemp("data") / "lines.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    return str(path)


def _paddle2onnx_header(model: onnx.ModelProto) -> onnx.ModelProto:
    """`x: [-1, 3, ?, ?]` and `y: [-1, 2]`: the batch a dim_value of -1, height and width with neither value nor
    name, as an older paddle2onnx wrote them."""
    x_dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim in (x_dims[0], x_dims[2], x_dims[3]):
        dim.Clear()
    x_dims[0].dim_value = -1
    y_dims = model.graph.output[0].type.tensor_type.shape.dim
    y_dims[0].Clear()
    y_dims[0].dim_value = -1
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def paddle_cls(tmp_path_factory, text_data) -> bytes:
    """The trained classifier as the file the issue describes."""
    torch.manual_seed(0)
    module = TextDirection()
    data = np.load(text_data)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.nll_loss(torch.log(module(x) + 1e-9), y).backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        (torch.zeros(1, 3, HEIGHT, WIDTH),),
        buffer,
        input_names=["x"],
        output_names=["y"],
        opset_version=11,
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}},
        dynamo=False,
    )
    return _paddle2onnx_header(onnx.load_model_from_string(buffer.getvalue())).SerializeToString()


def _run(data: bytes | str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _input_header(path) -> list:
    return [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]


def test_the_paddle2onnx_header_is_read_as_free_and_sized_from_the_data(paddle_cls, text_data, tmp_path):
    (tmp_path / "cls.onnx").write_bytes(paddle_cls)
    assert ort.InferenceSession(paddle_cls).get_inputs()[0].shape[0] is None  # -1: onnxruntime reads it as free
    loaded = load_model(tmp_path / "cls.onnx")
    assert loaded.input_shape is None and loaded.pending_parity is not None  # sized and checked once data is known
    summary = check_inputs(ModelSource(tmp_path / "cls.onnx"), text_data, CompressConfig(device="cpu"))
    assert summary.input_shape == (3, HEIGHT, WIDTH) and summary.num_classes == 2
    graph = onnx.load_model_from_string(loaded.onnx_graph)
    assert all(d.dim_value >= 0 for value in graph.graph.input for d in value.type.tensor_type.shape.dim)
    x = np.load(text_data)["x_val"]
    with torch.no_grad():
        converted = loaded.module(torch.from_numpy(x)).numpy()
    assert np.abs(converted - _run(paddle_cls, x)).max() < 1e-4  # parity with onnxruntime on the uploaded file


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lwct", "filter"])
def test_the_paddle2onnx_classifier_compresses_with_free_axes_kept(paddle_cls, text_data, method, tmp_path):
    (tmp_path / "cls.onnx").write_bytes(paddle_cls)
    config = CompressConfig(
        method=method, device="cpu", target=AccuracyTarget(max_drop=10), **own_options(method, lwct=LWCT, filter=FILTER)
    )
    report = compress_files(ModelSource(tmp_path / "cls.onnx"), text_data, tmp_path / "out", config)
    x = np.load(text_data)["x_val"]
    baseline = (_run(paddle_cls, x).argmax(1) == np.load(text_data)["y_val"]).mean() * 100
    assert report["baseline"]["accuracy"] == pytest.approx(baseline) and baseline > 90
    if method == "lwct":
        assert report["compression_ratio"] > 1
    else:  # channels left the graph (a 2 KB model's .sqz header outweighs them in bytes)
        assert report["compressed"]["macs"] < report["baseline"]["macs"]
    exported = tmp_path / "out" / "model.onnx"
    assert _input_header(exported) == ["batch", 3, "height", "width"]
    wider = np.concatenate([x, x[..., : WIDTH // 2]], axis=3)  # another width: the free axes really are free
    compressed = load_model(tmp_path / "out" / "model")
    with torch.no_grad():
        expected = compressed.module(torch.from_numpy(wider)).numpy()
    assert np.abs(_run(str(exported), wider) - expected).max() < 1e-4


def _classifier(input_dims, output_dims) -> onnx.ModelProto:
    """Conv → GlobalAveragePool → Flatten → Gemm, with the input and output shapes written as given (None: no shape
    at all, not even a rank)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]

    def value(name, dims):
        if dims is None:
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        info = helper.make_tensor_value_info(name, TensorProto.FLOAT, [1] * len(dims))
        for dim, size in zip(info.type.tensor_type.shape.dim, dims, strict=True):
            dim.Clear()
            if isinstance(size, str):
                dim.dim_param = size
            elif size != "absent" and size is not None:
                dim.dim_value = size
        return info

    graph = helper.make_graph(nodes, "g", [value("x", input_dims)], [value("y", output_dims)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


FREE_AXES = {
    "named": (["N", 3, "H", "W"], ["N", 2]),
    "question marks": (["?", 3, "?", "?"], ["?", 2]),
    "absent": ([None, 3, None, None], [None, 2]),
    "zero": ([0, 3, 0, 0], [0, 2]),
    "minus one": ([-1, 3, -1, -1], [-1, -1]),
    "minus two and a fixed size": ([-2, 3, 8, -7], [-1, 2]),
    "no shape at all": (None, None),
}


@pytest.mark.parametrize("name", FREE_AXES)
def test_every_way_of_writing_a_free_axis_is_free(name, tmp_path):
    input_dims, output_dims = FREE_AXES[name]
    model = _classifier(input_dims, output_dims)
    normalised = normalize_onnx(model).model
    for value in list(normalised.graph.input) + list(normalised.graph.output):
        assert all(size is None or size > 0 for size in declared_sizes(value) or [])
        assert all(d.dim_value >= 0 for d in value.type.tensor_type.shape.dim)  # what a runtime reads as free
    onnx.save(model, tmp_path / "m.onnx")
    loaded = load_model(tmp_path / "m.onnx")
    assert loaded.input_shape is None
    x = np.random.default_rng(1).random((20, 3, 8, 12), dtype=np.float32)
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x, y_val=y)
    summary = check_inputs(ModelSource(tmp_path / "m.onnx"), tmp_path / "d.npz", CompressConfig(device="cpu"))
    assert summary.input_shape == (3, 8, 12) and summary.num_classes == 2


def test_rewrites_no_stand_in_size_can_check_are_checked_at_the_data_size(tmp_path):
    """A MatMul + Add head sized for 6×10 inputs runs at no stand-in size: the rewrite into Gemm is checked against
    the uploaded graph once the data gives the size, and the converted module against onnxruntime."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Flatten", ["c"], ["f"]),
            helper.make_node("MatMul", ["f", "fc"], ["m"]),
            helper.make_node("Add", ["m", "bias"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2])],
        [
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((4 * 6 * 10, 2)).astype(np.float32), "fc"),
            numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "bias"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    pending = load_model(tmp_path / "m.onnx").pending_parity
    assert pending is not None and pending.unchecked_original is not None
    assert "Gemm" in {node.op_type for node in pending.model.graph.node}
    x = rng.random((20, 3, 6, 10), dtype=np.float32)
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x, y_val=y)
    summary = check_inputs(ModelSource(tmp_path / "m.onnx"), tmp_path / "d.npz", CompressConfig(device="cpu"))
    assert summary.input_shape == (3, 6, 10) and summary.num_classes == 2
    tampered = onnx.ModelProto()
    tampered.CopyFrom(pending.model)
    for tensor in tampered.graph.initializer:
        if list(tensor.dims) == [2]:  # the Gemm's bias: a rewrite that changed the outputs
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + 1, tensor.name))
    assert agrees_at(pending, x) and not agrees_at(dataclasses.replace(pending, model=tampered), x)
