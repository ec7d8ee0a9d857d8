"""Which layers int8 makes faster where the model runs: on a CPU, int8 kernels pay for quantizing their input and
dequantizing their output, and for small layers that costs more than the cheaper arithmetic saves (the digits LeNet-5
runs 0.35× as fast in int8). Each convolution and fully connected layer is measured on its own, as a one-layer
float graph against the same layer in QDQ int8 form (boundary conversions included, so the int8 side is never
flattered), A/B interleaved on the target runtime (core.measure.compare). Only layers int8 makes faster beyond the
noise are quantized; the others stay float. Layers of the same geometry are measured once.
"""

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from squeezer.core.config import Int8Config, SpeedTarget
from squeezer.core.errors import SqueezerError, is_out_of_memory
from squeezer.core.events import Guard, TimeLimitReached
from squeezer.core.measure.compare import SpeedComparison, compare_on_target

QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_CALIBRATION_SAMPLES = 4  # ranges do not change a kernel's speed: a few random inputs calibrate the one-layer graphs
_LAYER_BUDGET_S = 0.5  # per layer: the layers' verdicts only propose choices, which are timed as whole models


@dataclass(frozen=True)
class LayerSpeed:
    """One layer's float graph (baseline) against its int8 form (candidate) on the target runtime."""

    node: str  # the node's name in the graph that is quantized
    op: str
    comparison: SpeedComparison

    @property
    def int8_faster(self) -> bool:
        return self.comparison.verdict == "faster"


def module_name(node_name: str) -> str:
    """The torch module a node exported by torch.onnx came from: "/layer1/layer1.0/conv1/Conv" is
    "layer1.0.conv1" (a container's child is scoped "<container>.<index>")."""
    path: list[str] = []
    previous = ""
    for scope in node_name.strip("/").split("/")[:-1]:
        local = scope[len(previous) + 1 :] if previous and scope.startswith(previous + ".") else scope
        path.append(local)
        previous = scope
    return ".".join(path)


def name_nodes(model: onnx.ModelProto) -> None:
    """Gives every unnamed node a unique name, so the quantizer's exclusion list can name any of them."""
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = next(f"node_{index}_{n}" for n in range(len(taken) + 1) if f"node_{index}_{n}" not in taken)
            taken.add(node.name)


def quantizable_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The convolutions and matrix products whose weights are constants: what onnxruntime's quantizer turns into
    int8 kernels."""
    constants = {tensor.name for tensor in model.graph.initializer}
    return [
        node
        for node in model.graph.node
        if node.op_type in QUANTIZABLE_OPS and len(node.input) > 1 and node.input[1] in constants
    ]


def exclusion_choices(model: onnx.ModelProto, speeds: list[LayerSpeed]) -> dict[str, list[str]]:
    """The whole-model choices worth timing, each as the nodes it leaves float, most int8 first: every layer int8;
    only the layers int8 ran slower at the graph's ends (a float layer there adds conversions on one side only);
    and only the layers measured faster int8. Choices that come out the same are listed once."""
    slower = [layer.node for layer in speeds if not layer.int8_faster]
    inputs = {item.name for item in model.graph.input}
    outputs = {item.name for item in model.graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ends = {
        node.name
        for node in model.graph.node
        if inputs & set(node.input) or _feeds_only_outputs(node, consumers, outputs)
    }
    choices = {"all": [], "ends": [name for name in slower if name in ends], "faster": slower}
    unique: dict[str, list[str]] = {}
    for label, float_nodes in choices.items():
        if float_nodes not in unique.values() and (not float_nodes or len(float_nodes) < len(speeds)):
            unique[label] = float_nodes
    return unique


def _feeds_only_outputs(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], outputs: set[str]) -> bool:
    """Whether a graph output is reached from `node` through no other convolution or matrix product."""
    frontier = list(node.output)
    while frontier:
        tensor = frontier.pop()
        if tensor in outputs:
            return True
        for consumer in consumers.get(tensor, []):
            if consumer.op_type in QUANTIZABLE_OPS:
                return False
            frontier.extend(consumer.output)
    return False


def layer_speeds(
    model: onnx.ModelProto, sample: np.ndarray, settings: Int8Config, target: SpeedTarget, guard: Guard | None = None
) -> list[LayerSpeed]:
    """Every quantizable layer of `model` timed float against int8 on `target`; `sample` (one input, batch axis
    first) gives the layers' input shapes."""
    nodes = quantizable_nodes(model)
    shapes: dict[str, tuple] = {}
    with _unless_unrunnable():
        shapes = _input_shapes(model, nodes, sample)
    if not nodes or len(shapes) < len({node.input[0] for node in nodes}):
        return []  # no layer can be timed alone: the whole-model comparison decides alone
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    measured: dict[bytes, SpeedComparison | None] = {}
    speeds = []
    for node in nodes:
        shape = shapes[node.input[0]]
        layer = _one_layer_graph(node, weights, shape, model.opset_import)
        key = _geometry_key(layer)
        if key not in measured:
            measured[key] = None
            with _unless_unrunnable():
                measured[key] = _compare(layer, shape, settings, target, guard)
        comparison = measured[key]
        if comparison is not None:
            speeds.append(LayerSpeed(node.name, node.op_type, comparison))
    return speeds


@contextlib.contextmanager
def _unless_unrunnable() -> Iterator[None]:
    """Lets a failure pass that only says a graph cannot be run or quantized in pieces (an op onnxruntime's
    quantizer does not take alone, a shape only the whole graph fixes): that layer is then timed only within the
    whole model. Stops, time limits and running out of memory still end the work."""
    try:
        yield
    except (SqueezerError, TimeLimitReached):
        raise
    except Exception as error:
        if is_out_of_memory(error):
            raise


def _input_shapes(model: onnx.ModelProto, nodes: list[onnx.NodeProto], sample: np.ndarray) -> dict[str, tuple]:
    """Each node's input shape without the batch axis, read from one run of the float model on `sample`."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = list(dict.fromkeys(node.input[0] for node in nodes))
    known = {output.name for output in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in wanted if name not in known
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(wanted, {session.get_inputs()[0].name: sample.astype(np.float32)})
    return {name: tuple(value.shape[1:]) for name, value in zip(wanted, values, strict=True)}


def _one_layer_graph(node: onnx.NodeProto, weights: dict, shape: tuple, opsets) -> onnx.ModelProto:
    """`node` alone, with its constant inputs, on a float input of `shape` (batch axis free)."""
    layer = onnx.NodeProto()
    layer.CopyFrom(node)
    layer.name = "layer"
    layer.input[0] = "x"
    del layer.output[1:]
    layer.output[0] = "y"
    graph = helper.make_graph(
        [layer],
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weights[name] for name in node.input[1:] if name in weights],
    )
    model = helper.make_model(graph, opset_imports=list(opsets))
    # One layer with known shapes has nothing for onnxruntime's pre-processing to do: marked as done, so the
    # quantizer does not warn that it was skipped.
    helper.set_model_props(model, {"onnx.quant.pre_process": "onnxruntime.quant"})
    return model


def _geometry_key(layer: onnx.ModelProto) -> bytes:
    """What a layer's speed depends on: its op, attributes, input shape and weight shapes (not the weights)."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(layer)
    for tensor in stripped.graph.initializer:
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
    return stripped.SerializeToString(deterministic=True)


def _compare(
    layer: onnx.ModelProto, shape: tuple, settings: Int8Config, target: SpeedTarget, guard: Guard | None
) -> SpeedComparison:
    float_bytes = layer.SerializeToString()
    int8_bytes = _quantized(layer, shape, settings)
    return compare_on_target(float_bytes, int8_bytes, shape, target, budget_s=_LAYER_BUDGET_S, guard=guard)


class _RandomBatches:
    def __init__(self, shape: tuple):
        rng = np.random.default_rng(0)
        self._feeds = iter([{"x": rng.standard_normal((1, *shape), dtype=np.float32)}] * _CALIBRATION_SAMPLES)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _quantized(layer: onnx.ModelProto, shape: tuple, settings: Int8Config) -> bytes:
    """The one-layer graph quantized as the whole model is."""
    with tempfile.TemporaryDirectory(prefix="squeezer-int8-layer-") as tmp:
        source, quantized = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(layer, str(source))
        qdq_quantize(source, quantized, _RandomBatches(shape), settings)
        return quantized.read_bytes()


def qdq_quantize(source: Path, target: Path, batches, settings: Int8Config, float_nodes: Sequence[str] = ()) -> None:
    """`source` quantized into `target` in QDQ form, int8 weights and uint8 activations calibrated on `batches`
    (onnxruntime's CalibrationDataReader protocol), the nodes named in `float_nodes` left float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    quantize_static(
        str(source),
        str(target),
        batches,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=settings.per_channel,
        calibrate_method=methods[settings.calibration],
        calibration_providers=["CPUExecutionProvider"],
        nodes_to_exclude=list(float_nodes),
    )
