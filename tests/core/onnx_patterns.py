"""ONNX graphs written the way mainstream exporters write them (issue 12), built by hand with onnx.helper around the
weights of one small CNN trained on digits, so every pattern computes the same function and a test can compare them.

The CNN: Conv(1→8, 3×3) → activation → Conv(8→8, 3×3) → ReLU → flatten → classifier (10 classes) [→ Softmax].
"""

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.core.wild import train_on_digits


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = nn.functional.hardswish(self.conv1(x))
        return self.fc(torch.relu(self.conv2(x)).flatten(1))


def trained_weights() -> dict[str, np.ndarray]:
    module = train_on_digits(SmallCnn(), epochs=4)
    return {k: v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}


@dataclass(frozen=True)
class Pattern:
    """One exporter habit; the defaults are the plainest graph."""

    opset: int = 13
    ir_version: int | None = None  # None: the onnx package's current
    weights_in_constants: bool = False  # every weight a Constant node's value (PaddlePaddle, some TF exporters)
    initializers_as_inputs: bool = False  # IR < 4: initializers also listed as graph inputs
    cast_chains: bool = False  # weights stored float16, reached through Cast → Identity
    batch: int | str = "N"  # a dim_param name (dynamic) or a fixed size
    spatial: int | str = 8
    shape_flatten: bool = False  # Shape → Gather → Unsqueeze → Concat → Reshape instead of Flatten
    nhwc: bool = False  # the input is (N, H, W, C) with a leading Transpose (tf2onnx, Keras)
    classifier: str = "gemm"  # gemm (transB=1), gemm_plain (W stored transposed), matmul_add
    bn_as_mul_add: bool = False  # BatchNorm folded to per-channel Mul + Add after the first convolution
    hardswish: str = "clip"  # op (HardSwish, opset ≥ 14), clip (x·Clip(x+3, 0, 6)/6), hardsigmoid (x·HardSigmoid(x))
    softmax: str | None = None  # None, "Softmax" or "LogSoftmax" as the last node


def build(weights: dict[str, np.ndarray], p: Pattern) -> bytes:
    nodes, inits, consts = [], [], []
    counter = iter(range(10_000))

    def weight(name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, dtype=np.float32)
        if p.cast_chains:
            stored = f"{name}_f16"
            inits.append(numpy_helper.from_array(array.astype(np.float16), stored))
            nodes.append(helper.make_node("Cast", [stored], [f"{name}_cast"], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Identity", [f"{name}_cast"], [name]))
        elif p.weights_in_constants:
            consts.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, f"{name}_v")))
        else:
            inits.append(numpy_helper.from_array(array, name))
        return name

    def const(array, dtype=np.int64) -> str:
        name = f"c{next(counter)}"
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def node(op, inputs, **attrs) -> str:
        out = f"{op.lower()}{next(counter)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    x = "input"
    if p.nhwc:
        x = node("Transpose", [x], perm=[0, 3, 1, 2])
    w1, b1 = weights["conv1.weight"], weights["conv1.bias"]
    if p.bn_as_mul_add:
        scale = np.linspace(0.5, 2.0, 8, dtype=np.float32)
        h = node("Conv", [x, weight("conv1_w", w1 / scale[:, None, None, None])], pads=[1, 1, 1, 1])
        h = node("Mul", [h, weight("bn_scale", scale.reshape(1, 8, 1, 1))])
        h = node("Add", [h, weight("bn_shift", b1.reshape(1, 8, 1, 1))])
    else:
        h = node("Conv", [x, weight("conv1_w", w1), weight("conv1_b", b1)], pads=[1, 1, 1, 1])
    if p.hardswish == "op":
        h = node("HardSwish", [h])
    elif p.hardswish == "hardsigmoid":
        h = node("Mul", [h, node("HardSigmoid", [h], alpha=1 / 6, beta=0.5)])
    else:
        shifted = node("Add", [h, const(3.0, np.float32)])
        clipped = (
            node("Clip", [shifted], min=0.0, max=6.0)
            if p.opset < 11
            else node("Clip", [shifted, const(0.0, np.float32), const(6.0, np.float32)])
        )
        h = node("Div", [node("Mul", [h, clipped]), const(6.0, np.float32)])
    h = node(
        "Conv",
        [h, weight("conv2_w", weights["conv2.weight"]), weight("conv2_b", weights["conv2.bias"])],
        pads=[1, 1, 1, 1],
    )
    h = node("Relu", [h])
    if p.shape_flatten:
        batch = node("Gather", [node("Shape", [h]), const(0)], axis=0)
        batch = node("Unsqueeze", [batch], axes=[0]) if p.opset < 13 else node("Unsqueeze", [batch, const([0])])
        h = node("Reshape", [h, node("Concat", [batch, const([-1])], axis=0)])
    else:
        h = node("Flatten", [h], axis=1)
    fc_w, fc_b = weights["fc.weight"], weights["fc.bias"]
    if p.classifier == "gemm":
        h = node("Gemm", [h, weight("fc_w", fc_w), weight("fc_b", fc_b)], transB=1)
    elif p.classifier == "gemm_plain":
        h = node("Gemm", [h, weight("fc_w", fc_w.T), weight("fc_b", fc_b)])
    else:
        h = node("Add", [node("MatMul", [h, weight("fc_w", fc_w.T)]), weight("fc_b", fc_b)])
    if p.softmax:
        h = node(p.softmax, [h], axis=1 if p.opset >= 13 else 1)
    nodes.append(helper.make_node("Identity", [h], ["output"]))

    shape = [p.batch, p.spatial, p.spatial, 1] if p.nhwc else [p.batch, 1, p.spatial, p.spatial]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)]
    if p.initializers_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(
        consts + nodes,
        "wild",
        inputs,
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [p.batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", p.opset)], producer_name="patterns")
    model.ir_version = p.ir_version or min(model.ir_version, _ir_for_opset(p.opset))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ir_for_opset(opset: int) -> int:
    """The IR version that shipped with an opset (what an exporter of that time wrote)."""
    return {9: 4, 10: 5, 11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}.get(opset, 8)


def reference(weights: dict[str, np.ndarray], x: np.ndarray, softmax: str | None = None) -> np.ndarray:
    """What every pattern must output for NCHW inputs x."""
    module = SmallCnn()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    with torch.no_grad():
        y = module.eval()(torch.from_numpy(x))
        if softmax == "Softmax":
            y = y.softmax(1)
        elif softmax == "LogSoftmax":
            y = y.log_softmax(1)
    return y.numpy()
