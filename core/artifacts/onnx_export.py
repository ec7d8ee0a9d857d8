"""ONNX export of a compressed model, as small as the compression made it, so it runs anywhere onnxruntime does.

torch.onnx writes every weight as dense float32, so a ternary or float16 model would come out exactly as large as
the original. `compact_onnx` rewrites each weight initializer into the smallest *exact* standard form:

- a tensor whose every output channel is a small integer multiple of one scale (lwct's ternary {−σ, 0, +σ}, also
  after a BatchNorm was folded into it, which makes σ per channel) becomes int4 codes (int8 when the codes do not
  fit in 4 bits) and a per-tensor or per-channel scale, decoded by `Cast` and `Mul`;
- a tensor whose values are all exact in float16 (lwct's `float_precision`) is stored in float16 and `Cast`;
- anything else stays float32.

Every rewrite is checked to decode to the same bits, so the file computes what the `.sqz` model computes. onnxruntime
folds Cast and Mul of initializers into constants when the session starts, so the file runs as fast as the float32
one; `DequantizeLinear` was measured first and is not folded (onnxruntime keeps it for its QDQ fusions): it ran at
every inference, 0.036 against 0.012 ms at batch 1 on the digits LeNet-5. int4 needs opset 21 (onnxruntime ≥ 1.20
on CPU); the graph is converted to it only when an int4 initializer is written. int2 also decodes in onnxruntime
1.32 (opset 25) but is left out: few deployed runtimes read it yet.
"""

from pathlib import Path
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INT4_OPSET = 21  # the first opset with int4 tensors
MIN_ELEMENTS = 64  # below this a rewrite's extra node and scale cost more than they save
_CODE_TYPES = ((7, TensorProto.INT4), (127, TensorProto.INT8))  # (largest |code|, element type), smallest first


def export_onnx(model, path: Path, *, compact: bool = True) -> Path:
    """Writes `model.module` (a LoadedModel) to `path` with a dynamic batch axis, compacted unless `compact` is False.

    Preprocessing is not baked in: it lives in architecture.json, and `squeezer evaluate`
    applies it to .onnx inputs the same way it does for model.sqz and model/.
    """
    if model.input_shape is None:
        raise ValueError("export_onnx needs the model's input_shape")
    example = torch.zeros(1, *model.input_shape)
    torch.onnx.export(
        model.module.eval(), (example,), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET, dynamo=False,
    )
    if compact:
        onnx.save(compact_onnx(onnx.load(str(path))), str(path))
    return Path(path)


def integer_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(codes, scales, element type) with codes[c] * scales[c] == values[c] bit for bit along axis 0, or None.

    Each output channel's scale is its smallest nonzero magnitude, so ternary channels get codes in {−1, 0, 1}."""
    channels = values.reshape(len(values), -1) if values.ndim > 1 else values.reshape(1, -1)
    magnitudes = np.abs(channels)
    scales = np.where(magnitudes > 0, magnitudes, np.inf).min(axis=1)
    if not np.isfinite(scales).any():
        return None  # all zeros: float16 stores it as well, without a scale
    scales = np.where(np.isfinite(scales), scales, scales[np.isfinite(scales)][0]).astype(np.float32)
    codes = np.rint(channels / scales[:, None])
    largest = np.abs(codes).max()
    element_type = next((kind for bound, kind in _CODE_TYPES if largest <= bound), None)
    if element_type is None:
        return None
    decoded = (codes.astype(np.float32) * scales[:, None]).astype(np.float32)
    if not np.array_equal(decoded, channels):  # == treats −0.0 as 0.0: the sign of a zero weight changes no output
        return None
    if values.ndim <= 1 or np.all(scales == scales[0]):
        scales = scales[:1]
    return codes.astype(np.int8).reshape(values.shape), scales, element_type


def _raw_codes(codes: np.ndarray, element_type: int) -> bytes:
    """ONNX's raw layout: int8 one byte each; int4 two to a byte, the first element in the low nibble."""
    flat = codes.flatten().astype(np.uint8)
    if element_type == TensorProto.INT8:
        return flat.tobytes()
    nibbles = np.append(flat & 0x0F, np.uint8(0)) if len(flat) % 2 else flat & 0x0F
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def _dequantize_nodes(name: str, values: np.ndarray) -> tuple[list, list, int] | None:
    """Initializers and nodes that rebuild float32 `values` under `name` from the smallest exact storage, and the
    opset they need; None when float32 is already the smallest."""
    found = integer_codes(values) if values.ndim >= 1 else None
    if found is not None:
        codes, scales, element_type = found
        coded = helper.make_tensor(f"{name}.codes", element_type, codes.shape, _raw_codes(codes, element_type), raw=True)
        per_channel = scales.reshape(-1, *[1] * (values.ndim - 1)) if len(scales) > 1 else scales.reshape(())
        scale = numpy_helper.from_array(per_channel, f"{name}.scale")
        nodes = [helper.make_node("Cast", [coded.name], [f"{name}.decoded"], name=f"{name}.cast", to=TensorProto.FLOAT),
                 helper.make_node("Mul", [f"{name}.decoded", scale.name], [name], name=f"{name}.rescale")]
        return [coded, scale], nodes, INT4_OPSET if element_type == TensorProto.INT4 else OPSET
    halves = values.astype(np.float16)
    if np.array_equal(halves.astype(np.float32), values):
        half = numpy_helper.from_array(halves, f"{name}.float16")
        return [half], [helper.make_node("Cast", [half.name], [name], name=f"{name}.cast", to=TensorProto.FLOAT)], OPSET
    return None


def compact_onnx(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with every float32 initializer of at least MIN_ELEMENTS values in its smallest exact storage."""
    rewrites = {}
    for initializer in proto.graph.initializer:
        if initializer.data_type == TensorProto.FLOAT and np.prod(initializer.dims) >= MIN_ELEMENTS:
            rewrite = _dequantize_nodes(initializer.name, numpy_helper.to_array(initializer))
            if rewrite is not None:
                rewrites[initializer.name] = rewrite
    if not rewrites:
        return proto
    opset = max(needed for _, _, needed in rewrites.values())
    if opset > OPSET:  # converted while every initializer is still float32, which the converter reads
        from onnx import version_converter

        proto = version_converter.convert_version(proto, opset)
    graph = proto.graph
    kept = [init for init in graph.initializer if init.name not in rewrites]
    inputs = [value for value in graph.input if value.name not in rewrites]
    body = list(graph.node)
    del graph.initializer[:], graph.input[:], graph.node[:]
    graph.initializer.extend(kept + [init for initializers, _, _ in rewrites.values() for init in initializers])
    graph.input.extend(inputs)
    graph.node.extend([node for _, decode, _ in rewrites.values() for node in decode] + body)
    onnx.checker.check_model(proto)
    return proto
