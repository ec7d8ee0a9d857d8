"""ONNX as mainstream exporters write it (issue 12): each exporter pattern, hand-built and from torch's legacy and
dynamo exporters at several opsets, is normalised at intake, compressed by lwct and filter, and exported; the
converted model matches onnxruntime on the original file, and the exported model.onnx matches model.sqz."""

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, LwctConfig
from squeezer.core.errors import UnsupportedLayerError
from squeezer.core.intake.models import load_model
from squeezer.core.intake.onnx_normalize import normalize_onnx
from squeezer.core.pipeline import ModelSource, compress_files
from tests.core.onnx_patterns import Pattern, build, trained_weights
from tests.helpers import own_options

PATTERNS = {
    "weights in Constant nodes": (Pattern(weights_in_constants=True), {"Constant"}),
    "IR 3, initializers as inputs, opset 9": (Pattern(ir_version=3, initializers_as_inputs=True, opset=9), {"Clip"}),
    "Cast and Identity chains on weights": (Pattern(cast_chains=True), {"Cast", "Identity"}),
    "dynamic batch and spatial axes": (Pattern(spatial="H"), set()),
    "fixed batch of 1": (Pattern(batch=1), set()),
    "Shape→Gather→Concat→Reshape, opset 11": (Pattern(shape_flatten=True, opset=11), {"Shape", "Reshape"}),
    "NHWC input with a leading Transpose": (Pattern(nhwc=True), {"Transpose"}),
    "Gemm without transB": (Pattern(classifier="gemm_plain"), set()),
    "MatMul + Add classifier": (Pattern(classifier="matmul_add"), {"MatMul"}),
    "BatchNorm folded to Mul + Add": (Pattern(bn_as_mul_add=True), {"Mul", "Add"}),
    "HardSwish op, opset 14": (Pattern(hardswish="op", opset=14), set()),
    "x·HardSigmoid(x)": (Pattern(hardswish="hardsigmoid"), {"HardSigmoid", "Mul"}),
    "opset 21": (Pattern(opset=21), set()),
    "everything at once, opset 10": (
        Pattern(
            opset=10,
            weights_in_constants=True,
            batch=1,
            nhwc=True,
            shape_flatten=True,
            classifier="matmul_add",
            bn_as_mul_add=True,
        ),
        {"Constant", "Transpose", "Shape", "MatMul", "Mul", "Add"},
    ),
}
LWCT = LwctConfig(sparsity_grid=[0.5], prune_epochs=1, epochs_per_step=0, min_steps_per_stage=10)
FILTER = FilterConfig(
    init=["l1"], importance_epochs=1, epochs_per_step=1, min_steps_per_stage=10, levels=[0.3], refinements=0
)


@pytest.fixture(scope="module")
def weights():
    return trained_weights()


def _onnx_run(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _nchw_sample(count: int = 4) -> np.ndarray:
    return np.random.default_rng(0).random((count, 1, 8, 8), dtype=np.float32)


def _check_converted(path, original: bytes, nhwc: bool = False, batch: int = 4) -> None:
    """The converted module on NCHW inputs equals onnxruntime on the original file (NHWC where it took NHWC)."""
    module = load_model(path).module
    x = _nchw_sample(batch)
    expected = _onnx_run(original, x.transpose(0, 2, 3, 1) if nhwc else x)
    with torch.no_grad():
        actual = module.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(actual - expected).max() < 1e-3


def _compress(path, out, method: str) -> dict:
    config = CompressConfig(
        method=method, device="cpu", target=AccuracyTarget(max_drop=5), **own_options(method, lwct=LWCT, filter=FILTER)
    )
    return compress_files(ModelSource(path), "sample:digits", out, config)


@pytest.mark.parametrize("name", PATTERNS)
def test_each_exporter_pattern_is_normalised_and_converts_exactly(weights, name, tmp_path):
    pattern, gone = PATTERNS[name]
    data = build(weights, pattern)
    normalised = normalize_onnx(onnx.load_model_from_string(data))
    ops = {node.op_type for node in normalised.model.graph.node}
    assert not ops & gone, normalised.changes
    assert {"Conv", "Gemm"} <= ops and not {i.name for i in normalised.model.graph.input} & {
        t.name for t in normalised.model.graph.initializer
    }
    (tmp_path / "m.onnx").write_bytes(data)
    _check_converted(tmp_path / "m.onnx", data, nhwc=pattern.nhwc, batch=1 if pattern.batch == 1 else 4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "weights in Constant nodes",
        "everything at once, opset 10",
        "opset 21",
        "dynamic batch and spatial axes",
        "BatchNorm folded to Mul + Add",
    ],
)
@pytest.mark.parametrize("method", ["lwct", "filter"])
def test_exporter_patterns_compress_and_export(weights, name, method, tmp_path):
    (tmp_path / "m.onnx").write_bytes(build(weights, PATTERNS[name][0]))
    report = _compress(tmp_path / "m.onnx", tmp_path / "out", method)  # checks model.onnx against model.sqz itself
    assert report["baseline"]["accuracy"] > 80 and report["accuracy_drop"] <= 5
    assert report["compression_ratio"] > 1
    if method == "filter":
        assert report["compressed"]["flops"] < report["baseline"]["flops"]  # channels really left the normalised graph


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = nn.functional.hardswish(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.slow
@pytest.mark.parametrize("dynamo,opset", [(False, 9), (False, 13), (False, 17), (True, 18), (True, 20)])
def test_torch_exports_at_several_opsets_compress(dynamo, opset, tmp_path):
    torch.manual_seed(0)
    module, buffer = SqueezeExcite().eval(), io.BytesIO()
    shapes = (
        {"dynamic_shapes": ({0: torch.export.Dim("n", min=1, max=4096)},)}
        if dynamo
        else {"dynamic_axes": {"x": {0: "n"}}}
    )
    torch.onnx.export(
        module,
        (torch.zeros(2, 1, 8, 8),),
        buffer,
        dynamo=dynamo,
        opset_version=opset,
        input_names=["x"],
        output_names=["y"],
        **shapes,
    )
    (tmp_path / "m.onnx").write_bytes(buffer.getvalue())
    _check_converted(tmp_path / "m.onnx", buffer.getvalue())
    ops = {node.op_type for node in normalize_onnx(onnx.load(tmp_path / "m.onnx")).model.graph.node}
    assert ops == {"Conv", "HardSwish", "Relu", "Flatten", "Gemm"}
    report = _compress(tmp_path / "m.onnx", tmp_path / "out", "filter")
    assert report["compressed"]["flops"] < report["baseline"]["flops"]


def test_a_convolution_whose_bias_is_computed_keeps_its_mul_unfolded():
    """Conv → per-channel Mul folds only constant weights: a bias computed in the graph (here from the input) leaves
    the pattern as it came, rather than failing the upload."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])
    constants = [
        helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, 2.0]),
        helper.make_tensor("scale", TensorProto.FLOAT, [1, 2, 1, 1], [3.0, 4.0]),
        helper.make_tensor("axes", TensorProto.INT64, [3], [0, 2, 3]),
        helper.make_tensor("pair", TensorProto.INT64, [1], [2]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),  # shape (1,)
        helper.make_node("Expand", ["mean", "pair"], ["bias"]),  # shape (2,), computed from the input
        helper.make_node("Conv", ["x", "w", "bias"], ["conv"]),
        helper.make_node("Mul", ["conv", "scale"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "computed_bias", [x], [y], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    result = normalize_onnx(model)
    assert [node.op_type for node in result.model.graph.node][-2:] == ["Conv", "Mul"]
    assert not any("folded into them" in change or "skipped" in change for change in result.changes)


def test_an_unconvertible_operator_is_refused_naming_the_node(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="stem"),
            helper.make_node("ThresholdedRelu", ["c"], ["y"], name="head.gate", alpha=0.5),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [onnx.numpy_helper.from_array(np.ones((4, 1, 1, 1), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedLayerError, match=r"head\.gate \(ThresholdedRelu, opset 17\)"):
        load_model(tmp_path / "m.onnx")
